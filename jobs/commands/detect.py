"""`isrn detect`: faces in photos, by a logged or registered detector named by its MLflow model URI.

    isrn detect photo.jpg crowd.png                              # models:/isrn-face@champion
    isrn detect photo.jpg --model models:/isrn-face/3 --out detections/ --score-threshold 0.3 --max-size 1024

Each photo goes to the model's pyfunc exactly as a client's request would (`jobs.serving.pyfunc`: a
column `image` of encoded files, params `score_threshold` and `max_size`); what comes back is written
as IMAGE.json (boxes in the photo's pixels) and IMAGE.jpg (the photo with its boxes drawn). Models
logged before the pyfunc (a fixed-size `pt2` program) run behind the same letterbox.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/isrn-face@champion"


def load_registered(model_uri: str):
    """The detector at `model_uri` on MLFLOW_TRACKING_URI, else the local platform's MLflow; click errors."""
    import mlflow

    from jobs.environment import JobEnvironment
    from jobs.errors import ServiceUnavailableError
    from jobs.preflight import check_tracking_server
    from jobs.serving.loading import DetectorLoadError, load_detector

    # MLFLOW_TRACKING_URI, else the local platform's server (never a stray ./mlflow.db).
    tracking_uri = JobEnvironment.resolve().tracking_uri
    try:  # fail in seconds, naming the URL, rather than after minutes of the client's retries
        check_tracking_server(tracking_uri)
    except ServiceUnavailableError as error:
        raise click.ClickException(str(error)) from None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return load_detector(model_uri)
    except DetectorLoadError as error:
        raise click.ClickException(str(error)) from None


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
@click.option("--score-threshold", default=0.5, show_default=True, type=float,
              help="Lowest score drawn and listed (the served model's own default is the spec's, for AP).")
@click.option("--max-size", type=int, default=None,
              help="Longest side a photo is shrunk to (default: the model's, the size training evaluated at).")
def detect(images: tuple[Path, ...], model_uri: str, out_dir: Path, score_threshold: float,
           max_size: int | None) -> None:
    """Detect faces in IMAGES (JPEG, PNG, WebP); write per image its boxes as JSON and an annotated copy."""
    import cv2
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from jobs.serving.inputs import DetectionInputError

    detector = load_registered(model_uri)
    params = {"score_threshold": score_threshold} | ({"max_size": max_size} if max_size is not None else {})
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in images:
        data = path.read_bytes()
        try:
            faces = detector.predict(pd.DataFrame({"image": [data]}), params)
        except (MlflowException, DetectionInputError) as error:
            message = error.message if isinstance(error, MlflowException) else str(error)
            raise click.ClickException(f"{path}: {message.removeprefix('row 0: ')}") from None
        boxes = faces[["x1", "y1", "x2", "y2", "score"]].to_numpy()
        image_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        record = {"image": str(path), "model": model_uri, "max_size": max_size or detector.faces.max_size,
                  "score_threshold": score_threshold, "height": image_bgr.shape[0], "width": image_bgr.shape[1],
                  "boxes": [{"x1": round(float(b[0]), 1), "y1": round(float(b[1]), 1), "x2": round(float(b[2]), 1),
                             "y2": round(float(b[3]), 1), "score": round(float(b[4]), 4)} for b in boxes]}
        (out_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=1))
        cv2.imwrite(str(out_dir / f"{path.stem}.jpg"), annotate(image_bgr, boxes))
        click.echo(f"{path}: {len(boxes)} faces -> {out_dir / (path.stem + '.json')}")
