"""`isrn evaluate`: the official WIDER FACE AP of a predictions folder.

    isrn evaluate --predictions runs/preds --ground-truth ../shared/widerface/ground_truth
    isrn evaluate --predictions runs/preds --ground-truth GT --json          # {"easy": …, "medium": …, "hard": …}
    isrn evaluate --predictions runs/preds --ground-truth GT --float-iou --plot pr.png
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--predictions",
    "pred_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of <event>/<image>.txt files in the official submission format.",
)
@click.option(
    "--ground-truth",
    "gt_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding wider_face_val.mat and wider_{easy,medium,hard}_val.mat.",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"easy": AP, "medium": AP, "hard": AP} only.')
@click.option(
    "--float-iou",
    is_flag=True,
    help="Float IoU and best-overlap matching, as the Python ports (default: the official int32 matching).",
)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Save the PR curves to this image file.")
def evaluate(pred_dir: Path, gt_dir: Path, as_json: bool, float_iou: bool, plot_path: Path | None) -> None:
    """Official WIDER FACE AP (Easy, Medium, Hard) of a predictions folder."""
    from isrn_model.wider_eval import evaluate as wider_evaluate
    from isrn_model.wider_eval import load_ground_truth, read_predictions

    start = time.perf_counter()
    try:
        ground_truth = load_ground_truth(gt_dir)
        predictions = read_predictions(pred_dir)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    loaded = time.perf_counter()
    missing = sum(key not in predictions for key in ground_truth.keys())
    if predictions and len(ground_truth) and missing == len(ground_truth):  # every AP would be 0: say why
        given, expected = "/".join(next(iter(predictions))), "/".join(ground_truth.keys()[0])
        raise click.ClickException(
            f"none of the {len(predictions)} prediction files in {pred_dir} names an image of the ground truth in "
            f"{gt_dir} (e.g. {given}.txt, where the ground truth has {expected}): the event or image names differ; "
            "give --ground-truth of the split the predictions were made on")
    if missing:
        logger.warning("%d of %d images have no prediction file (counted as no detections)", missing, len(ground_truth))
    try:
        result = wider_evaluate(predictions, ground_truth, float_iou=float_iou)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    logger.debug("read in %.2f s, evaluated in %.2f s", loaded - start, time.perf_counter() - loaded)

    if plot_path is not None:
        from isrn_model.wider_eval.plot import plot_pr_curves

        plot_pr_curves(result, plot_path, label=pred_dir.name)
        logger.info("PR curves saved to %s", plot_path)

    if as_json:
        click.echo(json.dumps(result.ap))
        return
    variant = "float IoU (Python ports)" if float_iou else "official (int32 matching)"
    click.echo(f"WIDER FACE AP, {variant}: {len(ground_truth)} images, {sum(len(p) for p in predictions.values())} detections")
    click.echo(f"{'setting':8} {'AP':>7} {'faces':>7}")
    for setting, ap in result.ap.items():
        click.echo(f"{setting:8} {ap:7.4f} {result.num_faces[setting]:7d}")
