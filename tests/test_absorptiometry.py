"""Radiographic absorptiometry against hand-computed grey levels, areas and soft tissue."""

import numpy as np
import pytest

from osteo_jax.config import CLASS_NAMES
from osteo_jax.eval.radiogrammetry.absorptiometry import (
    ABSORPTIOMETRY_KEYS,
    absorptiometry,
    absorptiometry_keys,
)


def _phantom():
    labels = np.zeros((60, 80), np.int64)
    image = np.full((60, 80), 0.1)  # open beam
    image[5:55, 5:75] = 0.3  # soft tissue
    labels[10:30, 10:20] = CLASS_NAMES.index("MC2")  # a 20 x 10 bone
    image[10:30, 10:20] = 0.6
    image[11:29, 11:19] = 0.8  # its interior (the edge ring stays at 0.6)
    labels[40:44, 50:53] = CLASS_NAMES.index("MC2")  # a speck of the same class: not the bone
    labels[35:50, 30:36] = CLASS_NAMES.index("radius")
    image[35:50, 30:36] = 0.5
    return image, labels


def test_grey_area_and_soft_tissue_match_a_hand_computation():
    image, labels = _phantom()
    got = absorptiometry(image, labels, spacing_mm=0.5, bones=("MC2", "radius", "MC5"))
    assert tuple(got) == absorptiometry_keys(("MC2", "radius", "MC5"))
    # Erosion by 1 px (0.4 mm at 0.5 mm/px rounds to 1) leaves MC2's interior at 0.8 only.
    assert got["MC2_grey"] == pytest.approx(0.8)
    assert got["MC2_area_mm2"] == pytest.approx(200 * 0.25)  # the largest component only
    assert got["radius_grey"] == pytest.approx(0.5)
    assert got["radius_area_mm2"] == pytest.approx(90 * 0.25)
    assert np.isnan(got["MC5_grey"]) and np.isnan(got["MC5_area_mm2"])  # absent bone
    # Soft tissue: background within 5 mm (10 px) of a bone, the speck's pixels excluded.
    # Every such pixel inside the soft-tissue box is 0.3, and they outnumber the open beam.
    assert got["soft_grey"] == pytest.approx(0.3)


def test_all_bones_by_default_and_errors():
    image, labels = _phantom()
    assert tuple(absorptiometry(image, labels, spacing_mm=0.2)) == ABSORPTIOMETRY_KEYS
    with pytest.raises(ValueError, match="unknown bone"):
        absorptiometry(image, labels, spacing_mm=0.2, bones=("MC9",))
    with pytest.raises(ValueError, match="spacing_mm"):
        absorptiometry(image, labels, spacing_mm=0.0)
    with pytest.raises(ValueError, match="integer"):
        absorptiometry(image, labels.astype(float), spacing_mm=0.2)
    with pytest.raises(ValueError, match="shape"):
        absorptiometry(image[:10], labels, spacing_mm=0.2)
