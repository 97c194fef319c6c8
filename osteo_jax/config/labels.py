"""Label names shared by every stage: classes of the label map, bones, WHO categories, ROIs."""

from __future__ import annotations

# Label ids of the 8-class map: background, then the 7 bones that become segments.
CLASS_NAMES: tuple[str, ...] = ("background", "radius", "ulna", "MC1", "MC2", "MC3", "MC4", "MC5")
BONE_NAMES: tuple[str, ...] = CLASS_NAMES[1:]

WHO_CATEGORIES: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")

# Regions of interest a segment set can be cut into (``SegmentConfig.roi``): name -> the
# ``(segment name, bones whose masks make its box)`` pairs. ``"bones"`` is the paper's one
# segment per bone; the others are the crop-based baselines' regions (the paper's Table 8:
# manual / landmark crops), one box around several bones.
ROI_REGIONS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "bones": tuple((b, (b,)) for b in BONE_NAMES),
    "wrist": (("wrist", ("radius", "ulna")),),
    "metacarpals": (("metacarpals", ("MC2", "MC3", "MC4")),),
    "wrist+metacarpals": (
        ("wrist", ("radius", "ulna")),
        ("metacarpals", ("MC2", "MC3", "MC4")),
    ),
}
