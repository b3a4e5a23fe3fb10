"""AP per WIDER FACE attribute value and face size: where a detector fails, not only how much.

    from isrn_model.wider_eval import EvalSettings, evaluate_breakdown, load_ground_truth
    breakdown = evaluate_breakdown(predictions, load_ground_truth("ground_truth/"),
                                   settings=EvalSettings(test_size=1024, score_threshold=0.05,
                                                         nms_threshold=0.4, top_k=750))
    breakdown.ap("hard", "occlusion=heavy")    # 0.41, or None when the subset has no face
    print(breakdown.table(by="attribute"))     # rows: subsets; columns: Easy / Medium / Hard AP, faces
    breakdown.to_json()                        # {"easy": {"all": {"ap": .., "faces": ..}, ...}, ..., "settings": {..}}

Definition. For a setting s (Easy, Medium, Hard) and a subset F of faces (`subsets.py`), the official
protocol of s is run unchanged, except that a face of s's keep list that is not in F is treated
exactly as the official tool treats a face outside the keep list: a detection matching it is
ignored, neither true nor false positive, and it is not in the recall denominator. So the subset
`all` gives s's official AP bit for bit, and a subset's face count is the number of s's faces in F.

Which face a detection matches does not depend on F, so detections are matched once
(`evaluate.match_detections`) and every (setting, subset) curve is read from that matching.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from isrn_model.wider_eval.evaluate import IOU_THRESHOLD, Matching, WiderResult, match_detections, voc_ap
from isrn_model.wider_eval.ground_truth import ImageKey, WiderGroundTruth
from isrn_model.wider_eval.subsets import (ATTRIBUTE_SUBSETS, PLAIN_SUBSETS_NOTE, SIZE_BANDS, SIZE_SUBSETS, SUBSETS,
                                           subset_mask)

logger = logging.getLogger(__name__)

BY = {"attribute": ATTRIBUTE_SUBSETS, "size": SIZE_SUBSETS, "all": ATTRIBUTE_SUBSETS + SIZE_SUBSETS}
"""`WiderBreakdown.table(by=...)` -> the rows it shows (after the row `all`)."""

_MATCHING = {False: "official int32 overlap", True: "float IoU (Python ports)"}


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How the evaluated detections were made, carried with the result (filled by the caller).

    Not to be confused with the Easy / Medium / Hard settings of the protocol. None: not known
    (e.g. a predictions folder from elsewhere). The metric adds its own facts (IoU threshold,
    overlap variant) to `WiderBreakdown.to_json()["settings"]`.
    """

    test_size: int | None = None
    """Input side in pixels the images were resized to (long side, letterboxed); None: original size."""
    test_scales: tuple[float, ...] | None = None
    """Scales of multi-scale testing relative to `test_size`; None or (1.0,): single scale."""
    flip: bool | None = None
    """Whether horizontally flipped images were also run and merged (test-time augmentation)."""
    score_threshold: float | None = None
    """Detections scoring below this were dropped before NMS."""
    nms_threshold: float | None = None
    """IoU of non-maximum suppression."""
    top_k: int | None = None
    """Detections kept per image after NMS."""

    def __post_init__(self) -> None:
        if self.test_size is not None and (isinstance(self.test_size, bool) or int(self.test_size) != self.test_size
                                           or self.test_size <= 0):
            raise ValueError(f"EvalSettings.test_size must be a positive whole number of pixels, got {self.test_size!r}")
        if self.test_scales is not None:
            scales = tuple(float(scale) for scale in self.test_scales)
            if not scales or any(not np.isfinite(scale) or scale <= 0 for scale in scales):
                raise ValueError(f"EvalSettings.test_scales must be positive numbers, got {self.test_scales!r}")
            object.__setattr__(self, "test_scales", scales)
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"EvalSettings.{name} must be in [0, 1], got {value!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k <= 0):
            raise ValueError(f"EvalSettings.top_k must be a positive whole number, got {self.top_k!r}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["test_scales"] = list(self.test_scales) if self.test_scales is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> EvalSettings:
        """The inverse of `to_dict`; other keys (the metric's facts) are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        if values.get("test_scales") is not None:
            values["test_scales"] = tuple(values["test_scales"])
        return cls(**values)

    def describe(self) -> str:
        """One line, e.g. 'test size 1024, single scale, flip no, score threshold 0.05, NMS threshold 0.4, top-k 750'."""
        def known(value, text) -> str:
            return "unknown" if value is None else text(value)
        scales = self.test_scales
        return ", ".join([
            f"test size {known(self.test_size, str)}",
            "single scale" if scales is None or scales == (1.0,) else "scales " + " ".join(f"{s:g}" for s in scales),
            f"flip {known(self.flip, lambda flip: 'yes' if flip else 'no')}",
            f"score threshold {known(self.score_threshold, lambda value: f'{value:g}')}",
            f"NMS threshold {known(self.nms_threshold, lambda value: f'{value:g}')}",
            f"top-k {known(self.top_k, str)}",
        ])


@dataclass(frozen=True)
class SubsetAP:
    """AP of one (setting, subset).

    Attributes:
        ap: AP in [0, 1]; None when no face of the setting is in the subset (there is nothing to find).
        faces: the setting's faces in the subset (the recall denominator).
        pr_curve: float64 [1000, 2] of (precision, recall) as `WiderResult.pr_curves`; None when the
            subset has no face, or when read back from JSON.
    """

    ap: float | None
    faces: int
    pr_curve: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class WiderBreakdown:
    """AP per setting and face subset, with the settings that produced it.

    Attributes:
        subsets: setting -> subset name (`subsets.SUBSETS`, `all` first) -> SubsetAP.
        settings: how the detections were made (`EvalSettings`).
        float_iou: whether the float-IoU variant produced this (False: the official tool).
    """

    subsets: dict[str, dict[str, SubsetAP]]
    settings: EvalSettings = field(default_factory=EvalSettings)
    float_iou: bool = False

    def ap(self, setting: str, subset: str = "all") -> float | None:
        return self._get(setting, subset).ap

    def faces(self, setting: str, subset: str = "all") -> int:
        return self._get(setting, subset).faces

    def pr_curve(self, setting: str, subset: str = "all") -> np.ndarray | None:
        return self._get(setting, subset).pr_curve

    @property
    def result(self) -> WiderResult:
        """The official result (subset `all`), identical to `evaluate`'s."""
        every = {setting: by_subset["all"] for setting, by_subset in self.subsets.items()}
        if any(row.pr_curve is None for row in every.values()):
            raise ValueError("this breakdown was read from JSON and holds no PR curves; evaluate again for a WiderResult")
        return WiderResult(ap={s: row.ap for s, row in every.items()}, pr_curves={s: row.pr_curve for s, row in every.items()},
                           num_faces={s: row.faces for s, row in every.items()}, float_iou=self.float_iou)

    def to_json(self) -> dict:
        """{setting: {subset: {"ap": float or None, "faces": int}}, "settings": {...}} (json.dumps-able)."""
        out: dict = {setting: {subset: {"ap": row.ap, "faces": row.faces} for subset, row in by_subset.items()}
                     for setting, by_subset in self.subsets.items()}
        out["settings"] = {
            **self.settings.to_dict(),
            "iou_threshold": IOU_THRESHOLD,
            "matching": _MATCHING[self.float_iou],
            "size_bands_px": {band: list(limits) for band, limits in SIZE_BANDS.items()},
            "subsets": PLAIN_SUBSETS_NOTE,
        }
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> WiderBreakdown:
        """The inverse of `to_json`, without PR curves (e.g. a previous run's breakdown to compare with)."""
        settings = data.get("settings", {})
        subsets = {setting: {subset: SubsetAP(None if row["ap"] is None else float(row["ap"]), int(row["faces"]))
                             for subset, row in by_subset.items()}
                   for setting, by_subset in data.items() if setting != "settings"}
        return cls(subsets=subsets, settings=EvalSettings.from_dict(settings),
                   float_iou=settings.get("matching") == _MATCHING[True])

    def to_metrics(self, prefix: str = "val_ap") -> dict[str, float]:
        """Flat metric names for a tracker, e.g. {"val_ap_hard_occlusion_heavy": 0.41, "val_ap_easy_size_small": ...}.

        Subsets without a face are left out (no value, rather than a misleading 0). The subset `all`
        is left out too: it is the official AP, `<prefix>_<setting>`, which the caller logs already.
        """
        return {f"{prefix}_{setting}_{subset.replace('=', '_')}": row.ap
                for setting, by_subset in self.subsets.items() for subset, row in by_subset.items()
                if subset != "all" and row.ap is not None}

    def table(self, by: str = "all") -> str:
        """Plain text: a row per subset (`by`: "attribute", "size" or "all"), per setting AP and faces."""
        if by not in BY:
            raise ValueError(f"by must be one of {tuple(BY)}, got {by!r}")
        settings = list(self.subsets)
        present = [subset for subset in ("all", *BY[by]) if all(subset in self.subsets[s] for s in settings)]
        labels = {subset: subset + (f" ({_band_text(subset)})" if subset in SIZE_SUBSETS else "") for subset in present}
        width = max(len(label) for label in labels.values())
        header = f"{'subset':<{width}}" + "".join(f"  {setting.capitalize() + ' AP':>10} {'faces':>6}" for setting in settings)
        lines = [f"WIDER FACE AP by {'face attribute and size' if by == 'all' else 'face ' + by} "
                 f"({_MATCHING[self.float_iou]}, IoU {IOU_THRESHOLD:g})", header, "-" * len(header)]
        for subset in present:
            cells = []
            for setting in settings:
                row = self.subsets[setting][subset]
                cells.append(f"  {'–' if row.ap is None else f'{row.ap:.4f}':>10} {row.faces:>6}")
            lines.append(f"{labels[subset]:<{width}}" + "".join(cells))
        lines.append("A face outside the subset is ignored, as the official tool ignores a face outside the setting; "
                     "faces: the setting's faces in the subset; '–': no face.")
        if by in ("attribute", "all"):
            lines.append(PLAIN_SUBSETS_NOTE[0].upper() + PLAIN_SUBSETS_NOTE[1:] + ".")
        if by in ("size", "all") and all(all(s in self.subsets[x] for s in SIZE_SUBSETS) for x in settings):
            below = {x: self.faces(x) - sum(self.faces(x, s) for s in SIZE_SUBSETS) for x in settings}
            lines.append(f"Faces under {SIZE_BANDS['small'][0]} px high, in no size band: "
                         + ", ".join(f"{x} {n}" for x, n in below.items()) + ".")
        lines.append(f"Evaluation settings: {self.settings.describe()}.")
        return "\n".join(lines)

    def _get(self, setting: str, subset: str) -> SubsetAP:
        if setting not in self.subsets:
            raise ValueError(f"unknown setting {setting!r}; this breakdown has {tuple(self.subsets)}")
        if subset not in self.subsets[setting]:
            raise ValueError(f"subset {subset!r} was not evaluated; this breakdown has {tuple(self.subsets[setting])}")
        return self.subsets[setting][subset]


def evaluate_breakdown(
    predictions: Mapping[ImageKey, np.ndarray],
    ground_truth: WiderGroundTruth,
    *,
    float_iou: bool = False,
    settings: EvalSettings | None = None,
    subsets: Sequence[str] | None = None,
) -> WiderBreakdown:
    """AP and PR curve of every (setting, subset), the official AP (subset `all`) included.

    Args:
        predictions, ground_truth, float_iou: as `evaluate`.
        settings: how the detections were made, carried into the result.
        subsets: names from `subsets.SUBSETS` (`all` is always added first). Default: all of them,
            or `all` and the size bands when the ground truth carries no attribute labels.

    Raises:
        ValueError: as `evaluate`; an unknown subset; an attribute subset without attribute labels.
    """
    if subsets is None:
        subsets = SUBSETS
        if not ground_truth.has_attributes:
            logger.warning("the ground truth carries no attribute labels: the breakdown is by size only")
            subsets = ("all", *SIZE_SUBSETS)
    matching = match_detections(predictions, ground_truth, float_iou=float_iou)
    return breakdown_of(matching, ground_truth, settings=settings, subsets=subsets)


def breakdown_of(matching: Matching, ground_truth: WiderGroundTruth, *, settings: EvalSettings | None = None,
                 subsets: Sequence[str] = SUBSETS) -> WiderBreakdown:
    """The breakdown from a matching of the same ground truth (`evaluate.match_detections`)."""
    names = list(dict.fromkeys(("all", *subsets)))
    masks = {name: subset_mask(ground_truth, name) for name in names}  # raises on an unknown name first
    results: dict[str, dict[str, SubsetAP]] = {}
    for setting in ground_truth.settings:
        keep = ground_truth.keep_mask(setting)
        results[setting] = {}
        for name in names:
            counted = keep & masks[name]
            faces = int(counted.sum())
            if faces == 0 and name != "all":
                results[setting][name] = SubsetAP(ap=None, faces=0)
                continue
            # `all` is the official result, whatever it holds: a setting without faces (a tiny val set)
            # gets the curve and AP that `evaluate` gives it, so `result` is `evaluate`'s bit for bit.
            curve = matching.pr_curve(counted)
            results[setting][name] = SubsetAP(ap=voc_ap(curve[:, 1], curve[:, 0]), faces=faces, pr_curve=curve)
    return WiderBreakdown(subsets=results, settings=settings or EvalSettings(), float_iou=matching.float_iou)


def _band_text(subset: str) -> str:
    low, high = SIZE_BANDS[subset.partition("=")[2]]
    return f"{low}-{high} px" if high is not None else f">= {low} px"
