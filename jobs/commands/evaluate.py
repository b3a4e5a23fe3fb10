"""`isrn evaluate`: the official WIDER FACE AP, of a predictions folder or of a model on val shards,
and where it comes from: the AP of each face attribute value and size band.

    isrn evaluate --predictions runs/preds --ground-truth data/wider/ground_truth      # a folder of .txt files
    isrn evaluate --model models:/isrn-face@champion --shards s3://isrn-shards/demo    # a model on the val split
    isrn evaluate ... --by size                  # rows: face size bands only (attribute | size | all)
    isrn evaluate ... --json ap.json             # {setting: {subset: {"ap": …, "faces": …}}, "settings": {…}}
    isrn evaluate --predictions P --ground-truth GT --float-iou --plot pr.png

Rows are subsets of faces: a face outside the subset is ignored as the official tool ignores a face
outside the setting, so the row `all` is the official Easy / Medium / Hard AP.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command()
@click.option("--predictions", "pred_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of <event>/<image>.txt files in the official submission format.")
@click.option("--ground-truth", "gt_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding wider_face_val.mat and wider_{easy,medium,hard}_val.mat (with --predictions).")
@click.option("--model", "model_uri", metavar="URI",
              help="An MLflow model URI (models:/isrn-face@champion) to run on the val split of --shards.")
@click.option("--shards", metavar="URL", help="Shard root holding val/manifest.json (s3://bucket/prefix or a path).")
@click.option("--size", "export_size", type=int, default=None, help="With --model: the longest side a val image is "
                                                                     "shrunk to (default: the model's own max_size).")
@click.option("--by", type=click.Choice(["attribute", "size", "all"]), default="all", show_default=True,
              help="The table's rows: face attribute values, face size bands, or both.")
@click.option("--json", "json_path", metavar="FILE",
              help='Write {setting: {subset: {"ap": AP or null, "faces": N}}, "settings": {...}} to FILE '
                   '("-": standard output, instead of the table).')
@click.option("--float-iou", is_flag=True,
              help="Float IoU and best-overlap matching, as the Python ports (default: the official int32 matching).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the PR curves to this image file.")
def evaluate(pred_dir: Path | None, gt_dir: Path | None, model_uri: str | None, shards: str | None,
             export_size: int | None, by: str, json_path: str | None, float_iou: bool, plot_path: Path | None) -> None:
    """Official WIDER FACE AP (Easy, Medium, Hard): of a predictions folder against a ground-truth
    folder (--predictions, --ground-truth), or of a model on the val split of a shard root (--model,
    --shards)."""
    folders, model = (pred_dir, gt_dir), (model_uri, shards)
    if any(folders) == any(model) or not all(folders if any(folders) else model):
        raise click.UsageError("give either --predictions and --ground-truth, or --model and --shards")
    start = time.perf_counter()
    if pred_dir is not None:
        ground_truth, breakdown, what = _evaluate_folder(pred_dir, gt_dir, float_iou)
    else:
        ground_truth, breakdown, what = _evaluate_model(model_uri, shards, export_size, float_iou)
    logger.debug("evaluated in %.2f s", time.perf_counter() - start)

    if plot_path is not None:
        from isrn_model.wider_eval.plot import plot_pr_curves

        plot_pr_curves(breakdown.result, plot_path, label=(pred_dir.name if pred_dir else model_uri))
        logger.info("PR curves saved to %s", plot_path)
    if json_path is not None:
        document = json.dumps(breakdown.to_json(), indent=1)
        if json_path == "-":
            click.echo(document)
            return
        target = Path(json_path)
        partial = target.with_name(target.name + ".partial")  # never a half-written file under the name
        partial.write_text(document + "\n")
        partial.replace(target)
    click.echo(f"{what}: {len(ground_truth)} images")
    click.echo(breakdown.table(by=by))


def _evaluate_folder(pred_dir: Path, gt_dir: Path, float_iou: bool):
    """(ground truth, breakdown, what was evaluated) of a predictions folder."""
    from isrn_model.wider_eval import evaluate_breakdown, load_ground_truth, read_predictions

    try:
        ground_truth = load_ground_truth(gt_dir)
        predictions = read_predictions(pred_dir)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
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
        # How the predictions were made is not known here: the settings say only the metric's own.
        breakdown = evaluate_breakdown(predictions, ground_truth, float_iou=float_iou)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    detections = sum(len(p) for p in predictions.values())
    return ground_truth, breakdown, f"{pred_dir} ({detections} detections)"


def _evaluate_model(model_uri: str, shards: str, max_size: int | None, float_iou: bool):
    """(ground truth, breakdown, what was evaluated) of a model on the val split of a shard root: each
    val image goes through the model's own inference path (`jobs.serving`: letterbox to `max_size`,
    default the model's, the exported program, boxes back in the image's pixels)."""
    import tempfile

    from data_shards.manifest import fetch_ground_truth, manifest_url
    from isrn_model.wider_eval import EvalSettings, WiderFaceEvaluator, load_ground_truth
    from jobs.commands.detect import load_registered
    from jobs.environment import JobEnvironment
    from jobs.serving.inputs import DetectionInputError

    settings = JobEnvironment.resolve().s3
    detector = load_registered(model_uri).faces
    try:
        max_size = detector.check_max_size(detector.max_size if max_size is None else max_size)
    except DetectionInputError as error:
        raise click.ClickException(f"--size: {error}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="isrn-gt-") as directory:
            fetch_ground_truth(manifest_url(shards, "val"), directory, settings)
            ground_truth = load_ground_truth(Path(directory))
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(f"{shards}: {error}") from None
    evaluator = WiderFaceEvaluator(ground_truth, float_iou=float_iou)
    _predict_split(detector, max_size, shards, settings, evaluator)
    breakdown = evaluator.evaluate_breakdown(settings=EvalSettings(test_size=max_size))
    return ground_truth, breakdown, f"{model_uri} on {shards} (val, longest side {max_size})"


def _predict_split(detector, max_size: int, shards: str, settings, evaluator) -> None:
    """Feed the detections (every score the model returns) of each val image at `shards` to `evaluator`."""
    import numpy as np
    from tqdm import tqdm

    from data_shards.loader import LoaderConfig, make_val_loader
    from data_shards.manifest import manifest_url

    # The loader only reads and decodes here: no resize (a bound no image reaches), no padding.
    config = LoaderConfig(val_batch_size=1, val_max_size=1 << 30, val_size_multiple=1, num_workers=0)
    loader = make_val_loader(manifest_url(shards, "val"), config, settings=settings)
    for batch in tqdm(loader, total=len(loader), desc="eval", unit="img", disable=None):
        if not bool(batch["valid"][0]):
            continue
        image_rgb = batch["images"][0].permute(1, 2, 0).numpy().astype(np.uint8)  # decoded uint8, exactly
        rows = detector.detect([image_rgb], max_size=max_size, score_threshold=0.0)[0]
        evaluator.process(tuple(batch["keys"][0]), rows[:, :4], rows[:, 4])
