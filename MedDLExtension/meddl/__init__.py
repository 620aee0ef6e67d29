"""MedDL engine: deep-learning segmentation of medical images, with no Slicer, Qt or VTK imports.

The image/IO layer imports only numpy and SimpleITK so that Slicer's own process can use it
without loading torch; torch and MONAI load with the model.
"""

from .errors import DeviceError, InputError, MeddlError, ModelError, OutputError
from .image import Image
from .io import read_image, write_image

__version__ = "0.1.0"

__all__ = ["DeviceError", "Image", "InputError", "MeddlError", "ModelError", "OutputError",
           "read_image", "write_image", "__version__"]
