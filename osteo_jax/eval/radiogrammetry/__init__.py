"""Radiogrammetry: cortical index of MC2 (2MCI), MC3, MC4 and the radius from a bone label map.

The cortical index of a tubular bone at mid-diaphysis is ``CI = (W - M) / W`` with ``W`` the
outer (periosteal) width and ``M`` the medullary (endosteal) width (Barnett & Nordin 1960; the
2MCI of the second metacarpal: about 0.60 when normal, < 0.50 flags osteoporosis).

* :mod:`~osteo_jax.eval.radiogrammetry.measure`: the mask locates the bone (long axis, ends,
  measurement site, a first guess of the width); ``W`` and ``M`` of one bone, or several bones
  of one radiograph, are read off the radiograph itself.
* :mod:`~osteo_jax.eval.radiogrammetry.profile_fit`: the least-squares fit of the projection of
  a tube to a mean intensity profile across the shaft, which gives the sub-pixel widths.
* :mod:`~osteo_jax.eval.radiogrammetry.hypotheses`: every segmentation hypothesis of a mixture
  segmenter measured, each index summarised by its weighted spread.
* :mod:`~osteo_jax.eval.radiogrammetry.absorptiometry`: each bone's grey level and area on the
  detector's stored scale.
* :mod:`~osteo_jax.eval.radiogrammetry.porosity`: the cortical porosity of a measured shaft, from
  a Beer-Lambert fit of its profile on a calibrated detector (spectrum, attenuation, gain).
"""

from osteo_jax.eval.radiogrammetry.hypotheses import (
    measure_hypotheses,
    measure_prediction,
    weighted_spread,
)
from osteo_jax.eval.radiogrammetry.measure import (
    DEFAULT_BONES,
    BoneMeasurement,
    RadiogrammetryConfig,
    measure_bone,
    measure_radiograph,
)

__all__ = [
    "DEFAULT_BONES",
    "BoneMeasurement",
    "RadiogrammetryConfig",
    "measure_bone",
    "measure_hypotheses",
    "measure_prediction",
    "measure_radiograph",
    "weighted_spread",
]
