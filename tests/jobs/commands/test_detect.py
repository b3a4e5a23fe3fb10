"""The champion of a test run, used as users use it (integration, one model logged and promoted):

* `isrn detect` and `isrn evaluate --model` with `models:/isrn-face@champion`;
* `mlflow models serve -m models:/isrn-face@champion --env-manager local`, started once: photos of
  different sizes and formats in one request, boxes in each photo's own pixels and equal to
  `isrn detect`'s; bad rows answered 400 while the server keeps serving;
* `mlflow.pyfunc.load_model` in a fresh interpreter, with no warning about the model.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.commands.detect import detect
from tests.conftest import free_ports


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _overfit_detector(steps: int = 60):
    """A tiny ISRN trained to memorise two generated 256-px images (~30 s on 2 cores); the spec
    evaluates at 256 px, so the logged model sees photos at the size it learnt them."""
    import cv2
    import torch

    from data_shards.synth import SynthConfig, generate_image
    from isrn_model.builder import build_isrn
    from jobs.spec import load_spec

    torch.manual_seed(0)
    spec = load_spec("smoke", ["loader.val_max_size=256"])
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


@pytest.fixture(scope="module")
def champion(local_mlflow, tmp_path_factory):
    """A test run's model logged as training logs it (`log_detector`), promoted to isrn-face@champion;
    and the photos it knows: a JPEG at 2× (512 px wide) and a PNG at 1.5× (384 px), with their faces."""
    import cv2
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.promotion import promote
    from jobs.train.checkpoints import TrainingState, save_checkpoint
    from jobs.train.model_logging import log_detector, log_model_metrics

    tmp_path = tmp_path_factory.mktemp("champion")
    with pytest.MonkeyPatch.context() as env:
        for name, value in local_mlflow.config.client_env().items():
            env.setenv(name, value)
        env.setenv("ISRN_STATE_DIR", str(local_mlflow.state))
        uri = local_mlflow.config.tracking_uri
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        model, optimizer, spec, images, boxes = _overfit_detector()
        experiment = f"detect-{uuid.uuid4().hex[:8]}"
        run_id = client.create_run(client.create_experiment(experiment), tags={
            "isrn.val_manifest": "overfit", "isrn.spec_fingerprint": spec.fingerprint()}).info.run_id
        save_checkpoint(tmp_path / "ckpt", model, optimizer, TrainingState(), spec.to_dict())
        started = time.monotonic()
        model_uri = log_detector(uri, run_id, tmp_path / "ckpt", spec)
        logging_s = time.monotonic() - started
        # promotion compares the logged model's own AP
        log_model_metrics(uri, run_id, model_uri, {"easy": 1.0, "medium": 1.0, "hard": 1.0}, epoch=1, step=1,
                          val_manifest="overfit")
        client.set_terminated(run_id, "FINISHED")
        assert promote(uri, experiment=experiment, name="isrn-face", run_id=run_id).decision.promote

        photos = []
        for index, (image, factor, ext) in enumerate([(images[0], 2.0, ".jpg"), (images[1], 1.5, ".png")]):
            path = tmp_path / f"faces_{index}{ext}"
            quality = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
            cv2.imwrite(str(path), cv2.resize(image, None, fx=factor, fy=factor), quality)
            photos.append((path, boxes[index] * factor))
        yield {"uri": uri, "model_uri": model_uri, "spec": spec, "photos": photos, "tmp": tmp_path,
               "logging_s": logging_s}


@pytest.mark.integration
@pytest.mark.slow
def test_detect_and_evaluate_with_the_champion(champion, tmp_path: Path) -> None:
    import mlflow

    out = tmp_path / "out"
    paths = [str(path) for path, _ in champion["photos"]]
    result = CliRunner().invoke(detect, [*paths, "--out", str(out)])  # default models:/isrn-face@champion
    assert result.exit_code == 0, result.output
    for path, faces in champion["photos"]:
        record = json.loads((out / f"{path.stem}.json").read_text())
        assert record["model"] == "models:/isrn-face@champion" and record["max_size"] == 256
        assert (out / f"{path.stem}.jpg").is_file()
        found = [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in record["boxes"]]
        for face in faces:  # boxes in the photo's own pixels (2× and 1.5× the training images)
            assert max((_iou(face, box) for box in found), default=0.0) >= 0.5, (face, found)

    # A file that is not an image is named, with the cause.
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    result = CliRunner().invoke(detect, [str(bad), "--out", str(out)])
    assert result.exit_code == 1 and f"{bad}: not a JPEG, PNG or WebP file (11 bytes" in result.output

    # `isrn evaluate --model` runs the official metric of the same champion on a val shard split.
    from data_shards.shard_writer import build_split
    from data_shards.synth import SynthConfig, generate_dataset
    from jobs.commands.evaluate import evaluate

    generate_dataset(tmp_path / "wider", train=1, val=4, seed=3, config=SynthConfig(image_width=256, max_face=120))
    build_split(tmp_path / "wider", "val", str(tmp_path / "shards"), progress=False)
    evaluated = CliRunner().invoke(evaluate, ["--model", "models:/isrn-face@champion", "--shards",
                                              str(tmp_path / "shards"), "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output
    # MLflow's download progress shares the output; the JSON document is its last part.
    document = json.loads(evaluated.output[evaluated.output.index('{\n "easy"'):])
    ap = {setting: document[setting]["all"]["ap"] for setting in ("easy", "medium", "hard")}
    assert set(ap) == {"easy", "medium", "hard"} and all(0.0 <= v <= 1.0 for v in ap.values())

    # Any MLflow user loads the champion with pyfunc, in a fresh interpreter: no requirement mismatch
    # (MLflow warns when the model names packages the environment lacks: it named colorama before),
    # no warning about the model, and one row per face.
    code = ("import io, logging, sys, warnings, pandas as pd, mlflow\n"
            "from pathlib import Path\n"
            "log = io.StringIO(); logging.basicConfig(stream=log, level=logging.WARNING)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    m = mlflow.pyfunc.load_model('models:/isrn-face@champion')\n"
            "    out = m.predict(pd.DataFrame({'image': [Path(sys.argv[1]).read_bytes()]}))\n"
            "print('columns', list(out.columns), 'faces', len(out))\n"
            "print('warnings', [f'{w.filename}: {w.message}' for w in caught])\n"
            "print('log', log.getvalue())\n")
    loaded = subprocess.run([sys.executable, "-c", code, paths[0]], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": champion["uri"]}, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "columns ['image', 'x1', 'y1', 'x2', 'y2', 'score'] faces" in loaded.stdout
    assert "mismatch" not in (loaded.stdout + loaded.stderr).lower(), loaded.stdout[-3000:]
    # MLflow 3.17 warns about its own type hints when pyfunc first imports them (mlflow/types/):
    # not about this model. Anything else is.
    foreign = [w for w in re.findall(r"'([^']*)'", loaded.stdout.split("warnings", 1)[1].split("\nlog", 1)[0])
               if "/mlflow/types/" not in w]
    assert not foreign, foreign
    model_dir = Path(mlflow.artifacts.download_artifacts(champion["model_uri"], dst_path=str(tmp_path / "logged")))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert sorted(line.split("==")[0] for line in requirements) == ["mlflow", "numpy", "opencv-python-headless", "torch"]
    assert {p.name for p in (model_dir / "artifacts").iterdir()} == {"isrn_face.pt2", "isrn_face.onnx", "isrn_model.pt"}
    assert (model_dir / "serving_input_example.json").is_file()


def _post(url: str, payload: dict):
    import requests

    return requests.post(f"{url}/invocations", json=payload, timeout=120)


@pytest.mark.integration
@pytest.mark.slow
def test_the_champion_served_by_mlflow_answers_photos(champion, tmp_path: Path) -> None:
    # `isrn detect` first: the reference boxes, rounded to 0.1 px in its JSON.
    out = tmp_path / "detect"
    paths = [path for path, _ in champion["photos"]]
    result = CliRunner().invoke(detect, [*map(str, paths), "--out", str(out), "--score-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    expected = [np.array([[b["x1"], b["y1"], b["x2"], b["y2"], b["score"]]
                          for b in json.loads((out / f"{p.stem}.json").read_text())["boxes"]]) for p in paths]

    from jobs.serving.server import scoring_server

    (port,) = free_ports(1)
    started = time.monotonic()
    with scoring_server("models:/isrn-face@champion", port, tmp_path / "server.log", timeout_s=300) as url:
        startup_s = time.monotonic() - started

        # A JPEG (512 × 2·h) and a PNG (384 × 1.5·h) in one request, as base64 strings.
        encoded = [base64.b64encode(path.read_bytes()).decode() for path in paths]
        split = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]},
                 "params": {"score_threshold": 0.3}}
        answer = _post(url, split)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert predictions and set(predictions[0]) == {"image", "x1", "y1", "x2", "y2", "score"}
        for index, (_, faces) in enumerate(champion["photos"]):
            served = np.array([[p["x1"], p["y1"], p["x2"], p["y2"], p["score"]] for p in predictions
                               if p["image"] == index])
            assert served.shape == expected[index].shape, (served, expected[index])
            np.testing.assert_allclose(served[:, :4], expected[index][:, :4], atol=0.5)  # isrn detect's boxes
            np.testing.assert_allclose(served[:, 4], expected[index][:, 4], atol=1e-3)
            for face in faces:  # in the photo's own pixels
                assert max(_iou(face, box) for box in served[:, :4]) >= 0.5, (face, served)
        order = [(p["image"], -p["score"]) for p in predictions]
        assert order == sorted(order)  # by image, then by descending score

        # MLflow's `inputs` form gives the same answer.
        inputs = _post(url, {"inputs": {"image": encoded}, "params": {"score_threshold": 0.3}})
        assert inputs.status_code == 200, inputs.text
        assert inputs.json()["predictions"] == predictions

        # Bad requests: 400, naming the row and the cause; the server keeps serving.
        jpeg = paths[0].read_bytes()
        declared = bytearray(jpeg)
        sof = declared.index(b"\xff\xc0")
        declared[sof + 5: sof + 9] = (9000).to_bytes(2, "big") * 2  # 9000 × 9000 pixels declared
        bad = [
            ([encoded[0], base64.b64encode(b"not an image").decode()], "row 1: not a JPEG, PNG or WebP file"),
            ([base64.b64encode(jpeg[: len(jpeg) // 2]).decode()], "row 0: unusable JPEG file"),
            ([encoded[1], encoded[0], base64.b64encode(bytes(declared)).decode()],
             "row 2: unusable JPEG file .* declares 9000 × 9000 pixels, more than the limit"),
            ([], "the request has no rows"),
        ]
        for rows, message in bad:
            answer = _post(url, {"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}})
            assert answer.status_code == 400, (message, answer.status_code, answer.text[:2000])
            assert re.search(message, answer.json()["message"]), (message, answer.json()["message"][-2000:])
        answer = _post(url, {**split, "params": {"max_size": 100000}})
        assert answer.status_code == 400 and "max_size 100000: expected" in answer.json()["message"]
        assert _post(url, split).json()["predictions"] == predictions  # still serving, same answer
        print(f"\nlog_detector {champion['logging_s']:.0f} s; server up in {startup_s:.0f} s; "
              f"test total {time.monotonic() - started:.0f} s after the start")
