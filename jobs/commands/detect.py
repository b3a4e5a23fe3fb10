"""`isrn detect`: faces in photos, by a logged or registered detector named by its MLflow model URI.

    isrn detect photo.jpg crowd.png                              # models:/isrn-face@champion
    isrn detect photo.jpg --model models:/isrn-face/3 --out detections/

The model is the pt2 export logged by training: float32 [1, 3, S, S] raw RGB 0..255 in, [1, K, 5]
rows (x1, y1, x2, y2, score) out, S in the model's metadata (`export_size`). Images are
letterboxed to S×S: shrunk (never enlarged) so the long side fits, placed at the top left and
padded with black as the val loader pads, so a box maps back by dividing by the scale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/isrn-face@champion"


def letterbox(image_rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """uint8 [H, W, 3] → (float32 [1, 3, size, size], scale = letterboxed / original pixels)."""
    from data_shards.augment import val_resize

    resized, scale = val_resize(image_rgb, size)
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].copy(), scale


def boxes_to_original(rows: np.ndarray, scale: float, height: int, width: int,
                      score_threshold: float) -> np.ndarray:
    """[K, 5] (x1, y1, x2, y2, score) in letterbox pixels → kept rows in original pixels, clipped."""
    kept = rows[rows[:, 4] >= score_threshold].astype(np.float64)
    kept[:, :4] /= scale
    kept[:, [0, 2]] = kept[:, [0, 2]].clip(0, width)
    kept[:, [1, 3]] = kept[:, [1, 3]].clip(0, height)
    return kept[np.argsort(-kept[:, 4], kind="stable")]


class Detector:
    """An MLflow-logged ISRN export: `detector(image_rgb)` → [K, 5] boxes in the image's pixels."""

    def __init__(self, model_uri: str, export_size: int | None = None) -> None:
        import mlflow
        import mlflow.pytorch

        from jobs.environment import JobEnvironment
        from jobs.errors import ServiceUnavailableError
        from jobs.preflight import check_tracking_server

        # MLFLOW_TRACKING_URI, else the local platform's server (never a stray ./mlflow.db).
        tracking_uri = JobEnvironment.resolve().tracking_uri
        try:  # fail in seconds, naming the URL, rather than after minutes of the client's retries
            check_tracking_server(tracking_uri)
        except ServiceUnavailableError as error:
            raise click.ClickException(str(error)) from None
        mlflow.set_tracking_uri(tracking_uri)
        try:
            info = mlflow.models.get_model_info(model_uri)
            self.model = mlflow.pytorch.load_model(model_uri)
        except Exception as error:  # MlflowException, OSError, …: name the URI whatever failed
            raise click.ClickException(f"cannot load model {model_uri}: {error}") from None
        size = export_size or (info.metadata or {}).get("export_size")
        if not size:
            raise click.ClickException(f"model {model_uri} has no export_size in its metadata: pass --size")
        self.uri, self.size = model_uri, int(size)

    def raw(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(batch)).numpy()

    def __call__(self, image_rgb: np.ndarray, score_threshold: float) -> np.ndarray:
        batch, scale = letterbox(image_rgb, self.size)
        return boxes_to_original(self.raw(batch)[0], scale, *image_rgb.shape[:2], score_threshold)


def annotate(image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    import cv2

    out = image_bgr.copy()
    for x1, y1, x2, y2, score in boxes:
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 2)
        cv2.putText(out, f"{score:.2f}", (int(x1), max(10, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 255), 1, cv2.LINE_AA)
    return out


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_uri", default=DEFAULT_MODEL, show_default=True, help="Any MLflow model URI.")
@click.option("--out", "out_dir", default=Path("detections"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where IMAGE.json and IMAGE.jpg go.")
@click.option("--score-threshold", default=0.5, show_default=True, type=float)
@click.option("--size", "export_size", type=int, default=None, help="Input side, if the model's metadata lacks it.")
def detect(images: tuple[Path, ...], model_uri: str, out_dir: Path, score_threshold: float,
           export_size: int | None) -> None:
    """Detect faces in IMAGES; write per image its boxes as JSON and an annotated copy."""
    import cv2

    detector = Detector(model_uri, export_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in images:
        image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image_bgr is None:
            raise click.ClickException(f"{path}: not an image OpenCV can read")
        boxes = detector(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), score_threshold)
        record = {"image": str(path), "model": model_uri, "export_size": detector.size,
                  "height": image_bgr.shape[0], "width": image_bgr.shape[1],
                  "boxes": [{"x1": round(float(b[0]), 1), "y1": round(float(b[1]), 1), "x2": round(float(b[2]), 1),
                             "y2": round(float(b[3]), 1), "score": round(float(b[4]), 4)} for b in boxes]}
        (out_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=1))
        cv2.imwrite(str(out_dir / f"{path.stem}.jpg"), annotate(image_bgr, boxes))
        click.echo(f"{path}: {len(boxes)} faces -> {out_dir / (path.stem + '.json')}")


def predict_split(detector: Detector, shards: str, settings: Any, evaluator: Any) -> None:
    """Feed the detections of every image of the val split at `shards` to a `WiderFaceEvaluator`."""
    from data_shards.loader import LoaderConfig, make_val_loader
    from data_shards.manifest import manifest_url

    # The loader's own resize-and-pad is the letterbox: long side <= S, padded to a multiple of S.
    config = LoaderConfig(val_batch_size=1, val_max_size=detector.size, val_size_multiple=detector.size,
                          num_workers=0)
    from tqdm import tqdm

    loader = make_val_loader(manifest_url(shards, "val"), config, settings=settings)
    for batch in tqdm(loader, total=len(loader), desc="eval", unit="img", disable=None):
        if not bool(batch["valid"][0]):
            continue
        height, width = (int(v) for v in batch["image_sizes"][0])
        rows = boxes_to_original(detector.raw(batch["images"].numpy())[0], float(batch["scales"][0]), height, width,
                                 score_threshold=1e-6)
        evaluator.process(tuple(batch["keys"][0]), rows[:, :4], rows[:, 4])
