"""Subsets of faces by WIDER attribute value or by size, named as in the breakdown's output.

    all                     every face
    blur=clear|normal|heavy, expression=typical|exaggerate, illumination=normal|extreme,
    occlusion=none|partial|heavy, pose=typical|atypical, invalid=false|true
                            the faces whose `<attribute>_label_list` code is that value
    size=small|medium|large the faces whose box height h (pixels of the original image) is in
                            the band: small 10 <= h <= 50, medium 51 <= h <= 300, large h >= 301

The size bands are the WIDER FACE paper's scale bands (small 10-50, medium 50-300, large over 300
pixels of height) made disjoint on whole pixels (the ground truth is int32). A face under 10 px high
is in no size band; it still counts in `all` and in its attribute subsets.

The subsets are plain: the paper's analysis (section 5.1) also scores occlusion and pose only on
faces of at least 30 px, and pose and scale only on unoccluded faces; these subsets do not.
"""

from __future__ import annotations

import numpy as np

from isrn_model.wider_eval.ground_truth import ATTRIBUTE_VALUES, WiderGroundTruth

SIZE_BANDS: dict[str, tuple[int, int | None]] = {"small": (10, 50), "medium": (51, 300), "large": (301, None)}
"""Band -> (lowest, highest) box height in whole pixels, both included; None: no upper end."""

REPORT_ATTRIBUTES: tuple[str, ...] = ("blur", "expression", "illumination", "occlusion", "pose", "invalid")
"""The order attributes are reported in (the WIDER FACE paper's, `invalid` last)."""

ATTRIBUTE_SUBSETS: tuple[str, ...] = tuple(
    f"{attribute}={value}" for attribute in REPORT_ATTRIBUTES for value in ATTRIBUTE_VALUES[attribute])
SIZE_SUBSETS: tuple[str, ...] = tuple(f"size={band}" for band in SIZE_BANDS)
SUBSETS: tuple[str, ...] = ("all", *ATTRIBUTE_SUBSETS, *SIZE_SUBSETS)
"""Every subset the breakdown reports, in report order."""

PLAIN_SUBSETS_NOTE = ("subsets are plain: unlike the WIDER FACE paper (section 5.1), occlusion and pose are not "
                      "restricted to faces of at least 30 px, nor pose and size to unoccluded faces")


def size_band(heights: np.ndarray) -> np.ndarray:
    """The size band name of each box height (pixels), "" for a height under 10 px.

    Worked: heights [9, 10, 50, 51, 300, 301] -> ["", "small", "small", "medium", "medium", "large"].
    """
    heights = np.asarray(heights)
    out = np.full(heights.shape, "", dtype=object)
    for band, (low, high) in SIZE_BANDS.items():
        out[(heights >= low) & (heights <= (np.inf if high is None else high))] = band
    return out


def subset_mask(ground_truth: WiderGroundTruth, subset: str) -> np.ndarray:
    """bool [num_faces]: the faces of `subset` (a name of the module docstring), by global face index.

    Raises:
        ValueError: an unknown subset name (the message lists the known ones), or an attribute
            subset of ground truth without attribute labels.
    """
    if subset == "all":
        return np.ones(ground_truth.num_faces, bool)
    attribute, _, value = subset.partition("=")
    if attribute == "size" and value in SIZE_BANDS:
        return size_band(ground_truth.face_boxes()[:, 3]) == value
    if value in ATTRIBUTE_VALUES.get(attribute, ()):
        return ground_truth.face_attribute(attribute) == ATTRIBUTE_VALUES[attribute].index(value)
    raise ValueError(f"unknown face subset {subset!r}; expected one of: {', '.join(SUBSETS)}")
