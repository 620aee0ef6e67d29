"""MedDL engine: deep-learning segmentation, classification, enhancement and registration of medical
images, with no Slicer, Qt or VTK imports.

The image/IO layer imports only numpy and SimpleITK so that Slicer's own process can use it
without loading torch; torch and MONAI load with the model.
"""

import os

from .errors import DeviceError, InputError, MeddlError, ModelError, OutputError
from .image import Image
from .io import read_image, write_image

# On Apple GPUs, run the operations MPS lacks on the CPU (PyTorch warns once per operation) instead of
# failing. It must be set before torch is imported (nothing above imports it); a user's own setting wins.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

__version__ = "0.1.0"

__all__ = ["DeviceError", "Image", "InputError", "MeddlError", "ModelError", "OutputError",
           "read_image", "write_image", "__version__"]
