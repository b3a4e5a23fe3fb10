"""The demo's augmentation and generator switches, one `isrn train demo` per row, at the demo's budget.

    .venv/bin/isrn platform up
    .venv/bin/python bench/demo_ablation.py --rows recipe,no-das,no-zoom,neither     # ~6 min a row here, idle
    .venv/bin/python bench/demo_ablation.py --table                                  # the table so far
    .venv/bin/python bench/demo_ablation.py --rows neither --dry-run                 # the command only

Every row trains the demo spec (same seed, same model, same epochs unless the row says otherwise)
with the row's `--set` overrides, in the MLflow experiment `isrn-demo-ablation` so `isrn promote
demo` never sees it; its data set and shards are named after its generator (`data/demo-<faces>`,
`s3://isrn-shards/demo-<faces>`, with `-by-height` when its blur and occlusion are drawn by face
height), so rows with the same generator share them. Rows run one after the
other under `nice`; each row's result (final AP Easy / Medium / Hard, the logged model's URI, the
wall time) is added to `--results` as soon as it finishes, so a table can be built over several
sessions. A row whose generator settings or generator code differ from what generated the data and
built the shards under its name generates and shards them again first (`jobs/data_prep.py` compares
their fingerprints), so no row trains on another row's data or on an older generator's. The `demo`
row (the spec as it is) gives `make demo`'s AP. A row run again on the same commit and data gives the same AP
(`make demo` did, on two commits whose loop is the same), but one run per row says nothing of how far a small change to the
code or the data moves it: rows closer than a few points are not told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "isrn-demo-ablation"

RECIPE = {"loader.augment.data_anchor_sampling_prob": 0.5, "loader.augment.zoom_out_prob": 1.0}
"""The augmentation docs/model.md states, which the demo spec used before it had its own."""
NEITHER = {"loader.augment.data_anchor_sampling_prob": 0.0, "loader.augment.zoom_out_prob": 0.0}
NO_MODEL = {"tracking.log_model": False}
"""Rows that only need the AP skip exporting and logging the model (~50 s a row)."""

ROWS: dict[str, tuple[str, dict[str, object]]] = {
    "lfw-recipe": ("lfw faces; DAS 0.5, zoom-out every image (the demo before)",
                   {"data.synth.generator.faces": "lfw", **RECIPE}),
    "lfw-neither": ("lfw faces; no DAS, no zoom-out", {"data.synth.generator.faces": "lfw", **NEITHER}),
    "recipe": ("person faces; DAS 0.5, zoom-out every image", {**RECIPE}),
    "no-das": ("person faces; no DAS, zoom-out every image",
               {**RECIPE, "loader.augment.data_anchor_sampling_prob": 0.0}),
    "no-zoom": ("person faces; DAS 0.5, no zoom-out", {**RECIPE, "loader.augment.zoom_out_prob": 0.0}),
    "neither": ("person faces; no DAS, no zoom-out", {**NEITHER}),
    "neither-6ep": ("person faces; no DAS, no zoom-out, 6 epochs", {**NEITHER, "train.epochs": 6}),
    "neither-full-6ep": ("person faces; no DAS, no zoom-out, crop always the full short side, 6 epochs",
                         {**NEITHER, "loader.augment.crop_full_side_prob": 1.0, "train.epochs": 6,
                          "eval.every_epochs": 3}),
    "neither-b4-6ep": ("person faces; no DAS, no zoom-out, batch 4 per worker, 6 epochs (300 steps of 8 images)",
                       {**NEITHER, "loader.batch_size": 4, "train.epochs": 6, "eval.every_epochs": 3,
                        "checkpoint.every_steps": 100}),
    "neither-384": ("person faces; no DAS, no zoom-out, 384² crops",
                    {**NEITHER, "loader.augment.out_size": 384}),
    # The demo spec as it is (6 epochs, no DAS, no zoom-out) at three learning rates, and with the
    # crop always the full short side (more large faces whole, fewer zoomed in).
    "lr-0.002": ("the demo spec, lr 0.002 (its lr before)", {"optim.lr": 0.002}),
    "lr-0.004": ("the demo spec, lr 0.004 (its lr)", {"optim.lr": 0.004}),
    "lr-0.008": ("the demo spec, lr 0.008", {"optim.lr": 0.008}),
    "lr-0.004-full": ("the demo spec, lr 0.004, crop always the full short side",
                      {"optim.lr": 0.004, "loader.augment.crop_full_side_prob": 1.0}),
    # Rows for Easy's large faces, each against "demo" (the spec as it is) on the same data.
    "demo": ("the demo spec as it is", NO_MODEL),
    # The other way from lr-0.004-full: never the full short side, so more faces are zoomed in (larger).
    "crop-zoomed": ("the demo spec, crop never the full short side (U[0.5, 1] of it)",
                    {"loader.augment.crop_full_side_prob": 0.0, **NO_MODEL}),
    # Large faces sit on P5-P7, where STR's second step matches the first step's refined boxes, and the
    # first step takes only anchors at IoU >= 0.7: few positives for large faces early in training.
    "no-str": ("the demo spec, no two-step regression (STR) on P5-P7",
               {"model.str_levels": "[]", **NO_MODEL}),
    "epochs-5": ("the demo spec, 5 epochs (125 steps)", {"train.epochs": 5, **NO_MODEL}),
    # Is Easy lowest for want of steps? Three times the demo's, evaluated every 3 epochs as the demo is.
    "epochs-18": ("the demo spec, 18 epochs (450 steps)", {"train.epochs": 18, **NO_MODEL}),
    "epochs-9": ("the demo spec, 9 epochs (225 steps)", {"train.epochs": 9, **NO_MODEL}),
    "step1-0.5": ("the demo spec, first step matched as the second (face at IoU >= 0.5, background < 0.4)",
                  {"loss.step1_pos_iou": 0.5, "loss.step1_neg_iou": 0.4, **NO_MODEL}),
    # The crop keeps a face if its centre is inside and clips its box: the demo's crops cut 34 % of
    # the kept faces at least 100 px tall to under 90 % of their area ("large cut" of
    # bench/face_sizes.py), boxes on part of a face, which no val face is. Redrawn crops: 1.2 %.
    "crop-whole": ("the demo spec, crops redrawn while they cut a kept face to under 90 % of its area",
                   {"loader.augment.crop_min_visible": 0.9, **NO_MODEL}),
    # The generator blurs and occludes faces at the same rates at every size; real WIDER FACE's large
    # faces are nearly always sharp and its small ones mostly heavily blurred. Its own data set.
    "blur-by-height": ("the demo spec, generated blur and occlusion at real WIDER FACE's rates by face height",
                       {"data.synth.generator.blur_occlusion": "by_height", **NO_MODEL}),
    "blur-by-height-18": ("the demo spec, blur and occlusion by height, 18 epochs (450 steps)",
                          {"data.synth.generator.blur_occlusion": "by_height", "train.epochs": 18, **NO_MODEL}),
}


def command(row: str, spec: str) -> list[str]:
    """The `isrn train` command line of a row."""
    _, overrides = ROWS[row]
    faces = str(overrides.get("data.synth.generator.faces", "person"))
    if (blur := overrides.get("data.synth.generator.blur_occlusion", "flat")) != "flat":
        faces += f"-{blur}".replace("_", "-")
    sets = {"tracking.experiment": EXPERIMENT, "data.synth.root": f"data/demo-{faces}",
            "data.shards": f"s3://{os.environ.get('ISRN_SHARDS_BUCKET', 'isrn-shards')}/demo-{faces}", **overrides}
    out = ["nice", "-n", "10", str(REPO / ".venv/bin/isrn"), "train", spec]
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


def final_metrics(run_id: str) -> dict[str, object]:
    """The run's last val AP per setting and its logged model's URI."""
    import mlflow

    from jobs.environment import JobEnvironment
    from jobs.tags import MODEL_URI

    client = mlflow.MlflowClient(JobEnvironment.resolve().tracking_uri)
    run = client.get_run(run_id)
    out: dict[str, object] = {"model_uri": run.data.tags.get(MODEL_URI)}
    for setting in ("easy", "medium", "hard"):
        history = client.get_metric_history(run_id, f"val_ap_{setting}")
        out[setting] = max(history, key=lambda m: m.step).value if history else None
    return out


def run_row(row: str, spec: str, log_dir: Path) -> dict[str, object]:
    cmd = command(row, spec)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{row}.log"
    print(f"[{row}] {' '.join(cmd[3:])}  (log: {log})", flush=True)
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    text = log.read_text()
    match = re.search(r"/runs/([0-9a-f]{32})", text)
    if rc != 0 or not match:
        raise SystemExit(f"[{row}] failed (exit {rc}); see {log}")
    return {"row": row, "command": " ".join(["isrn"] + cmd[4:]), "wall_s": round(wall), "run_id": match.group(1),
            **final_metrics(match.group(1))}


def print_table(results: list[dict[str, object]]) -> None:
    def ap(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "-"

    print("| row | setting | AP Easy | AP Medium | AP Hard | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['row']} | {ROWS.get(str(r['row']), ('?',))[0]} | {ap(r['easy'])} | {ap(r['medium'])} | "
              f"{ap(r['hard'])} | {r['wall_s']} |")
    print()
    for r in results:
        print(f"{r['row']}: {r['command']}\n    model {r['model_uri']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="", help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--spec", default="demo")
    parser.add_argument("--results", type=Path, default=REPO / "data" / "demo-ablation.json")
    parser.add_argument("--table", action="store_true", help="print the table of --results and stop")
    parser.add_argument("--dry-run", action="store_true", help="print the rows' commands only")
    args = parser.parse_args()

    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    results = json.loads(args.results.read_text()) if args.results.is_file() else []
    if args.table or not rows:
        print_table(results)
        return
    for row in rows:
        if args.dry_run:
            print(" ".join(command(row, args.spec)))
            continue
        result = run_row(row, args.spec, args.results.parent / "demo-ablation-logs")
        results = json.loads(args.results.read_text()) if args.results.is_file() else []  # others may have written
        results = [r for r in results if r["row"] != row] + [result]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
        print_table([result])
        sys.stdout.flush()


if __name__ == "__main__":
    main()
