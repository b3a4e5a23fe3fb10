"""`isrn evaluate` through click's CliRunner, on a small ground truth written as official `.mat` files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import main
from isrn_model.wider_eval import SETTINGS, ground_truth_from_arrays, save_ground_truth, write_predictions

# Image a: faces (0, 0, 9, 5) then (0, 0, 9, 9), both in every setting; image b: one face, Hard only.
FACES = [np.array([[0, 0, 9, 5], [0, 0, 9, 9]]), np.array([[50, 50, 20, 20]])]
KEEP = {"easy": [[0, 1], []], "medium": [[0, 1], []], "hard": [[0, 1], [0]]}


@pytest.fixture()
def folders(tmp_path):
    gt = ground_truth_from_arrays(["0--Parade", "1--Handshaking"], ["a", "b"], FACES, KEEP)
    save_ground_truth(gt, tmp_path / "gt")
    # Image a: (0, 0, 9, 8) at 0.9 overlaps both faces (IoU 0.67 and 0.9), then face 0 itself at 0.8.
    # Official: both predictions match face 0 (the first whose overlap rounds to 1) -> AP 0.5 on
    # Easy (see test_wider_eval.test_float_and_int_variants_give_different_ap); float IoU: AP 1.
    # Image b has no prediction file.
    write_predictions(tmp_path / "pred", {("0--Parade", "a"): np.array([[0, 0, 9, 8, 0.9], [0, 0, 9, 5, 0.8]])})
    return tmp_path / "pred", tmp_path / "gt"


def _run(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args], catch_exceptions=False)


def test_json_output(folders, tmp_path):
    pred, gt = folders
    result = _run("--predictions", str(pred), "--ground-truth", str(gt), "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [key for key in document if key != "settings"] == list(SETTINGS)
    assert document["easy"]["all"] == {"ap": pytest.approx(0.5), "faces": 2}
    assert document["hard"]["all"]["faces"] == 3
    assert document["settings"]["iou_threshold"] == 0.5 and document["settings"]["matching"].startswith("official")
    _run("--predictions", str(pred), "--ground-truth", str(gt), "--json", str(tmp_path / "ap.json"), "--float-iou")
    float_doc = json.loads((tmp_path / "ap.json").read_text())
    assert float_doc["easy"]["all"]["ap"] == pytest.approx(1.0) and float_doc["settings"]["matching"].startswith("float")


def test_table_by_subset_and_plot(folders, tmp_path):
    pred, gt = folders
    result = _run("--predictions", str(pred), "--ground-truth", str(gt), "--plot", str(tmp_path / "pr.png"))
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.strip()}
    # Row `all` is the official AP: Easy 0.5 on 2 faces, Hard on 3 faces; then the attribute and size rows.
    assert rows["all"][:2] == ["0.5000", "2"] and rows["all"][5] == "3", result.output
    assert "size=small" in rows  # this ground truth has no attribute labels: sizes only
    sizes = _run("--predictions", str(pred), "--ground-truth", str(gt), "--by", "size").output
    assert "size=small" in sizes and "Easy AP" in sizes
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_ground_truth_file_is_a_clear_error(folders):
    pred, gt = folders
    (gt / "wider_easy_val.mat").unlink()
    result = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--ground-truth", str(gt)])
    assert result.exit_code == 1
    assert "wider_easy_val.mat not found" in result.output


def test_malformed_prediction_is_a_clear_error(folders):
    pred, gt = folders
    (pred / "0--Parade" / "a.txt").write_text("a\n1\n0 0 9 8\n")
    result = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--ground-truth", str(gt)])
    assert result.exit_code == 1
    assert "a.txt, line 3: expected 5 numbers" in result.output
