"""SimpleITK's registrations for the benchmark: affine (moments initialisation), then a B-spline or demons.

Each returns the whole fixed -> moving transform as a displacement field (k, j, i, 3) in LPS mm on the
fixed grid, T(x) = A(x + d(x)), the convention MedDL writes.
"""

from __future__ import annotations

import numpy as np


def to_sitk(image):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(image.array.astype(np.float32))
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(tuple(np.asarray(image.direction, float).ravel()))
    return out


def field_of(transform, reference) -> np.ndarray:
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def _mattes(method, sampling: float) -> None:
    method.SetMetricAsMattesMutualInformation(50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed=1)
    method.SetInterpolator(__import__("SimpleITK").sitkLinear)
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])


def affine(f, m):
    """Moments-initialised affine registration, Mattes mutual information, regular-step gradient descent."""
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    _mattes(method, 0.1)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                   gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(f, m)


def affine_bspline(fixed, moving) -> np.ndarray:
    import SimpleITK as sitk

    f, m = to_sitk(fixed), to_sitk(moving)
    first = affine(f, m)
    bspline = sitk.BSplineTransformInitializer(f, [10, 10, 10])
    method = sitk.ImageRegistrationMethod()
    _mattes(method, 0.05)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50)
    method.SetMovingInitialTransform(first)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(f, m)
    return field_of(sitk.CompositeTransform([first, bspline]), f)  # the B-spline first, then the affine


def affine_demons(fixed, moving) -> np.ndarray:
    import SimpleITK as sitk

    f, m = to_sitk(fixed), to_sitk(moving)
    first = affine(f, m)
    m = sitk.HistogramMatching(sitk.Resample(m, f, first, sitk.sitkLinear, 0.0), f, 256, 15, True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(100)
    demons.SetStandardDeviations(1.5)
    transform = None
    for shrink in (4, 2, 1):  # coarse to fine, each level starting from the last one's field
        fs, ms = sitk.Shrink(f, [shrink] * 3), sitk.Shrink(m, [shrink] * 3)
        if transform is None:
            displacement = demons.Execute(fs, ms)
        else:
            start = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fs.GetSize(),
                                                      fs.GetOrigin(), fs.GetSpacing(), fs.GetDirection())
            displacement = demons.Execute(fs, ms, start)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
    return field_of(sitk.CompositeTransform([first, transform]), f)
