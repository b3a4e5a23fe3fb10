"""What the registry says about itself in the MLflow UI: markdown descriptions, pure.

The registered model's description explains the detector (what it finds, its input and output,
as logged by jobs/train/model_logging.py) and how versions are promoted, and shows the
champion's AP table; each version's description gives the promotion decision and its reason.
"""

from __future__ import annotations

from isrn_model.wider_eval import SETTINGS, SUBSETS
from jobs.metrics import BREAKDOWN_PREFIX, BREAKDOWN_SETTING
from jobs.promotion.decision import AP_METRICS, Candidate, Decision, PromotionRule
from jobs.promotion.lock import lock_name


def ap_table(rows: list[tuple[str, Candidate]]) -> str:
    """A markdown table of the WIDER FACE val AP (Easy / Medium / Hard) of each (label, model)."""
    lines = ["| val AP | " + " | ".join(s.capitalize() for s in SETTINGS) + " |", "| --- |" + " --- |" * len(SETTINGS)]
    for label, model in rows:
        cells = [f"{model.scores[k]:.4f}" if k in model.scores else "–" for k in AP_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(rows: list[tuple[str, Candidate]]) -> str:
    """A markdown table of the Hard AP per face subset (attribute value, size band), a column per
    (label, model); "" when no model carries one. A subset without a face has no value ("–")."""
    subsets = [s for s in SUBSETS if s != "all"
               and any(BREAKDOWN_PREFIX + s.replace("=", "_") in model.scores for _, model in rows)]
    if not subsets:
        return ""
    lines = [f"| {BREAKDOWN_SETTING.capitalize()} AP by face subset | " + " | ".join(label for label, _ in rows) + " |",
             "| --- |" + " --- |" * len(rows)]
    for subset in subsets:
        key = BREAKDOWN_PREFIX + subset.replace("=", "_")
        cells = [f"{model.scores[key]:.4f}" if key in model.scores else "–" for _, model in rows]
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nA face outside the subset is ignored, as the official tool ignores a face "
                               "outside the setting; detections that match no face count against every subset.")


def _where(model: Candidate) -> str:
    at = [f"epoch {model.best_epoch}" if model.best_epoch is not None else "",
          f"step {model.best_step}" if model.best_step is not None else ""]
    return ", ".join(a for a in at if a)


def model_description(name: str, rule: PromotionRule, champion: Candidate | None, reason: str | None = None) -> str:
    """The registered model's description: the detector, the promotion rule and the champion's AP."""
    text = f"""# {name}: ISRN face detector

**Detects** faces: ISRN (Improved Selective Refinement Network, arXiv 1901.06651), trained by the ISRN
platform with Ray Train on WIDER FACE-format data. Each version is one training run's best evaluated
checkpoint, logged as an MLflow pyfunc that detects faces in photos.

**Input**: a column `image` of photos, one encoded JPEG, PNG or WebP file per row (bytes, or base64
text in JSON). Params: `score_threshold`, and `max_size`, the longest side a photo is shrunk to
(defaults: the threshold and size of the AP below).

**Output**: one row per face: `image` (the input row), `x1, y1, x2, y2, score`, in that photo's own
pixels; by image, then by descending score. The version also holds the detector as ONNX
(`artifacts/isrn_face.onnx`, float32 `[B, 3, H, W]` in, `[B, K, 5]` out).

**Use**: `isrn detect photo.jpg --model models:/{name}@champion`;
`mlflow models serve -m models:/{name}@champion --env-manager local`; or
`mlflow.pyfunc.load_model("models:/{name}@champion").predict(pd.DataFrame({{"image": [jpeg_bytes]}}))`.

## How versions are promoted
`isrn promote` registers a finished run's logged model as a new version (lineage in the `isrn.*`
tags). The alias `champion` moves to it only if the model's own `{rule.metric}` (the AP training
measured on exactly these weights) beats the champion's by at least the margin, on the same val
manifest; the replaced champion keeps the alias `previous`. A version's description says why it was
or was not promoted. Promotions are serialised by the registered model `{lock_name(name)}`.
"""
    if champion is None:
        return text + "\n## Champion\nNone yet.\n"
    label = f"v{champion.version}" + (f" ({_where(champion)})" if _where(champion) else "")
    text += (f"\n## Champion: version {champion.version}\n\n{ap_table([(label, champion)])}\n\n"
             f"Run `{champion.run_id}`, val manifest `{champion.val_manifest}`.\n")
    if breakdown := breakdown_table([(label, champion)]):
        text += f"\n{breakdown}\n"
    return text + (f"\nPromoted because: {reason}.\n" if reason else "")


def version_description(candidate: Candidate, decision: Decision, champion: Candidate | None,
                        rule: PromotionRule) -> str:
    """A version's description: the decision, its reason, and its AP beside the champion it was compared to."""
    verdict = "Promoted to `champion`" if decision.promote else "Not promoted"
    rows = [(f"this version{f' ({_where(candidate)})' if _where(candidate) else ''}", candidate)]
    if champion is not None and champion.run_id != candidate.run_id:
        rows.append((f"champion v{champion.version} at the time", champion))
    breakdown = breakdown_table(rows)
    return (f"**{verdict}**: {decision.reason}.\n\n{ap_table(rows)}\n\n"
            + (f"{breakdown}\n\n" if breakdown else "")
            + f"Run `{candidate.run_id}`, model `{candidate.model_uri}`, val manifest `{candidate.val_manifest}`; "
            f"rule: {rule.metric} {'higher' if rule.higher_is_better else 'lower'} is better, "
            f"margin {rule.margin:g}.\n")
