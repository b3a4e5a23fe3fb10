"""`isrn detect` / `isrn evaluate --model` helpers (unit) and detection with `models:/isrn-face@champion` (integration)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.commands.detect import boxes_to_original, detect, letterbox


def test_letterbox_shrinks_long_side_and_pads_bottom_right() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    batch, scale = letterbox(image, 128)
    assert batch.shape == (1, 3, 128, 128) and batch.dtype == np.float32
    assert scale == 128 / 200  # long side 200 -> 128
    assert batch[0, :, :64, :].min() == 7 and batch[0, :, 64:, :].max() == 0  # 100 × 0.64 = 64 rows of image


def test_letterbox_never_enlarges() -> None:
    batch, scale = letterbox(np.ones((50, 60, 3), np.uint8), 128)
    assert scale == 1.0 and batch[0, :, 50:, :].max() == 0 and batch[0, :, :, 60:].max() == 0


def test_boxes_map_back_by_the_scale_and_clip() -> None:
    rows = np.array([[10, 20, 30, 40, 0.9],      # / 0.5 -> 20, 40, 60, 80
                     [60, 0, 130, 10, 0.7],      # x2 = 260 clipped to the 250 px width
                     [0, 0, 5, 5, 0.2],          # below the threshold
                     [0, 0, 0, 0, 0.0]], np.float32)  # an unused export row
    kept = boxes_to_original(rows, 0.5, height=100, width=250, score_threshold=0.5)
    np.testing.assert_allclose(kept, [[20, 40, 60, 80, 0.9], [120, 0, 250, 20, 0.7]], rtol=1e-6)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _overfit_detector(steps: int = 60):
    """A tiny ISRN trained to memorise two generated images (~30 s on 2 cores); returns model, images, boxes."""
    import cv2
    import torch

    from data_shards.synth import SynthConfig, generate_image
    from isrn_model.builder import build_isrn
    from jobs.spec import load_spec

    torch.manual_seed(0)
    spec = load_spec("smoke", ["tracking.export_size=256"])
    config = SynthConfig(image_width=256, min_face=24, max_face=120, empty_prob=0, degenerate_prob=0)
    images, boxes = [], []
    for index in range(2):
        bgr, faces = generate_image("train", index, 7, config)
        images.append(bgr)
        boxes.append(np.array([[f.x, f.y, f.x + f.w, f.y + f.h] for f in faces], np.float32))
    side = 256
    batch = torch.stack([torch.from_numpy(np.pad(cv2.cvtColor(b, cv2.COLOR_BGR2RGB),
                                                 ((0, side - b.shape[0]), (0, side - b.shape[1]), (0, 0))))
                         .permute(2, 0, 1).float() for b in images])
    targets = [{"boxes": torch.from_numpy(b)} for b in boxes]
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(model(batch, targets).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return model.eval(), optimizer, spec, images, boxes


@pytest.mark.integration
@pytest.mark.slow
def test_detect_with_the_champion_finds_the_faces(platform_env, tmp_path: Path) -> None:
    import cv2
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.promotion import promote
    from jobs.train.checkpoints import TrainingState, save_checkpoint
    from jobs.train.model_logging import log_detector, log_model_metrics

    uri = platform_env.config.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    model, optimizer, spec, images, boxes = _overfit_detector()

    experiment = f"detect-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(client.create_experiment(experiment),
                               tags={"isrn.val_manifest": "overfit", "isrn.spec_fingerprint": spec.fingerprint()}).info.run_id
    save_checkpoint(tmp_path / "ckpt", model, optimizer, TrainingState(), spec.to_dict())
    model_uri = log_detector(uri, run_id, tmp_path / "ckpt", spec)
    # promotion compares the logged model's own AP
    log_model_metrics(uri, run_id, model_uri, {"easy": 1.0, "medium": 1.0, "hard": 1.0}, epoch=1, step=1,
                      val_manifest="overfit")
    client.set_terminated(run_id, "FINISHED")
    assert promote(uri, experiment=experiment, name="isrn-face", run_id=run_id).decision.promote

    # Twice the training size: the 512-wide image is letterboxed to 256 and its boxes mapped back.
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"faces_{index}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.resize(image, None, fx=2, fy=2), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = tmp_path / "out"
    result = CliRunner().invoke(detect, [*map(str, paths), "--out", str(out)])  # default models:/isrn-face@champion
    assert result.exit_code == 0, result.output
    for index, path in enumerate(paths):
        record = json.loads((out / f"{path.stem}.json").read_text())
        assert record["model"] == "models:/isrn-face@champion" and record["export_size"] == 256
        assert (out / f"{path.stem}.jpg").is_file()
        found = [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["boxes"]]
        for face in boxes[index] * 2:
            assert max((_iou(face, box) for box in found), default=0.0) >= 0.5, (face, found)

    # `isrn evaluate --model` runs the official metric of the same champion on a val shard split.
    from data_shards.shard_writer import build_split
    from data_shards.synth import SynthConfig, generate_dataset
    from jobs.commands.evaluate import evaluate

    generate_dataset(tmp_path / "wider", train=1, val=4, seed=3, config=SynthConfig(image_width=256, max_face=120))
    build_split(tmp_path / "wider", "val", str(tmp_path / "shards"), progress=False)
    evaluated = CliRunner().invoke(evaluate, ["--model", "models:/isrn-face@champion", "--shards", str(tmp_path / "shards"), "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output
    # MLflow's download progress shares the output; the JSON document is its last part.
    document = json.loads(evaluated.output[evaluated.output.index('{\n "easy"'):])
    ap = {setting: document[setting]["all"]["ap"] for setting in ("easy", "medium", "hard")}
    assert set(ap) == {"easy", "medium", "hard"} and all(0.0 <= v <= 1.0 for v in ap.values())

    # Any MLflow user loads the champion with pyfunc, in a fresh interpreter: no requirement mismatch
    # (MLflow warns when the model names packages the environment lacks: it named colorama before),
    # no warning about the model, and a prediction of the documented shape.
    code = ("import io, logging, warnings, numpy as np, mlflow\n"
            "log = io.StringIO(); logging.basicConfig(stream=log, level=logging.WARNING)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    m = mlflow.pyfunc.load_model('models:/isrn-face@champion')\n"
            "    out = m.predict(np.zeros((1, 3, 256, 256), np.float32))\n"
            "print('shape', tuple(out.shape))\n"
            "print('warnings', [f'{w.filename}: {w.message}' for w in caught])\n"
            "print('log', log.getvalue())\n")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert f"shape (1, {spec.inference.keep_top_k}, 5)" in loaded.stdout
    assert "mismatch" not in (loaded.stdout + loaded.stderr).lower(), loaded.stdout[-3000:]
    # MLflow 3.17 warns about its own type hints when pyfunc first imports them (mlflow/types/):
    # not about this model. Anything else is.
    foreign = [w for w in re.findall(r"'([^']*)'", loaded.stdout.split("warnings", 1)[1].split("\nlog", 1)[0])
               if "/mlflow/types/" not in w]
    assert not foreign, foreign
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "logged")))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert sorted(line.split("==")[0] for line in requirements) == ["mlflow", "numpy", "torch"]
