"""STC filter and STR refinement on a hand-built two-level example (P2 as the STC level, P5 as STR)."""

import math

import pytest
import torch

from isrn_model.config import LossConfig
from isrn_model.postprocess import dense_predictions
from isrn_model.stc_str import TwoStepOutputs, second_step_references, stc_keep_masks
from isrn_model.targets import compute_losses

LOGIT_P_0_0067 = -5.0  # sigmoid(−5) = 0.0067 ≤ 0.01 → background confidence 0.9933 ≥ 0.99: filtered
LOGIT_P_0_018 = -4.0   # sigmoid(−4) = 0.018 > 0.01: survives


def _outputs(box1_dx: float = 0.0, box2_dx: float = 0.0) -> TwoStepOutputs:
    # P2: A0 = [0, 0, 10, 10], A1 = [100, 100, 110, 110]; P5: A2 = [0, 0, 20, 20]
    return TwoStepOutputs(
        levels=(2, 5),
        anchors=[torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]]), torch.tensor([[0.0, 0, 20, 20]])],
        cls1={2: torch.tensor([[0.0, LOGIT_P_0_0067]], requires_grad=True)},
        box1={5: torch.tensor([[[box1_dx, 0.0, 0.0, 0.0]]], requires_grad=True)},
        cls2=[torch.tensor([[0.0, 0.0]], requires_grad=True), torch.tensor([[0.0]], requires_grad=True)],
        box2=[torch.zeros(1, 2, 4, requires_grad=True), torch.tensor([[[box2_dx, 0.0, 0.0, 0.0]]], requires_grad=True)],
    )


def test_stc_masks_only_stc_levels_and_only_below_threshold():
    cls1 = {2: torch.tensor([[LOGIT_P_0_0067, LOGIT_P_0_018, 3.0]])}
    masks = stc_keep_masks((2, 5), cls1, [3, 4], batch_size=1, face_threshold=0.01)
    assert masks[0].tolist() == [[False, True, True]]
    assert masks[1].tolist() == [[True] * 4]  # P5 (STR level) is never filtered


def test_str_refines_only_str_levels_and_step2_decodes_against_refined():
    out = _outputs(box1_dx=0.5, box2_dx=0.5)
    refs = second_step_references(out.levels, out.anchors, out.box1, batch_size=1)
    assert torch.equal(refs[0][0], out.anchors[0])  # P2: plain anchors
    # P5: A2 centre 10, width 20; dx = 0.5 → centre 20 → [10, 0, 30, 20]
    assert refs[1][0, 0].tolist() == pytest.approx([10.0, 0.0, 30.0, 20.0])
    scores, boxes = dense_predictions(out, stc_face_threshold=0.01)
    # step 2 from the refined box: centre 20 + 0.5 · 20 = 30 → [20, 0, 40, 20] (not [10, 0, 30, 20])
    assert boxes[0, 2].tolist() == pytest.approx([20.0, 0.0, 40.0, 20.0])
    assert boxes[0, :2].tolist() == out.anchors[0].tolist()
    # STC: A1's first-step probability 0.0067 ≤ 0.01 → score 0; the others sigmoid(0) = 0.5
    assert scores[0].tolist() == pytest.approx([0.5, 0.0, 0.5])


def test_stc_drops_filtered_anchor_from_second_step_loss():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    cfg = LossConfig(allow_low_quality_matches=False)
    losses = compute_losses(_outputs(), gt, cfg, stc_threshold=0.99)
    ln2 = math.log(2.0)
    # step 2: A0 face (IoU 1), A1 background but filtered by STC, A2 background (IoU 100/400 = 0.25 < 0.4)
    # focal(0 → face) = 0.25 · 0.5² · ln2 ; focal(0 → background) = 0.75 · 0.5² · ln2 ; one positive
    assert losses["loss_cls_2"].item() == pytest.approx(0.25 * 0.25 * ln2 + 0.75 * 0.25 * ln2, rel=1e-6)
    # step 1 on P2 only: A0 face at logit 0, A1 background at logit −5 (p = 0.0066929)
    p = 1 / (1 + math.exp(5.0))
    assert losses["loss_cls_1"].item() == pytest.approx(0.0625 * ln2 + 0.75 * p**2 * -math.log(1 - p), rel=1e-6)
    # step 1 regression on P5 only: A2 is no positive (IoU 0.25 < 0.7) → 0; step 2: A0 exact → 0
    assert losses["loss_box_1"].item() == 0.0
    assert losses["loss_box_2"].item() == 0.0


def test_step2_targets_encoded_against_refined_boxes():
    # Refine A2 by dx = −0.25 (→ [−5, 0, 15, 20]) so it is a step-2 positive for the face [−5, 0, 15, 20]...
    gt = [torch.tensor([[-5.0, 0.0, 15.0, 20.0]])]
    out = _outputs(box1_dx=-0.25, box2_dx=0.0)
    losses = compute_losses(out, gt, LossConfig(allow_low_quality_matches=False), stc_threshold=0.99)
    # ... then the step-2 target is encode(refined, face) = 0 and the zero prediction costs nothing,
    # whereas against the raw anchor it would be dx = −0.25.
    assert losses["loss_box_2"].item() == pytest.approx(0.0, abs=1e-7)


def test_str_matches_the_refined_box_not_the_raw_anchor():
    # Face [10, 0, 30, 20]. P5's raw anchor A2 = [0, 0, 20, 20]: IoU = 10·20 / (400 + 400 − 200) = 1/3,
    # below the step-2 background threshold 0.4. Refined by dx = 0.5 (centre 10 + 0.5 · 20 = 20) it is
    # [10, 0, 30, 20]: IoU 1 ≥ 0.5, a step-2 positive, and its box target encode(refined, face) = 0.
    gt = [torch.tensor([[10.0, 0.0, 30.0, 20.0]])]
    cfg = LossConfig(allow_low_quality_matches=False)
    ln2 = math.log(2.0)
    refined = compute_losses(_outputs(box1_dx=0.5), gt, cfg, stc_threshold=0.99)
    # step 2 at logit 0 (p = 0.5): A0 background 0.75 · 0.5² · ln2, A1 filtered by STC, A2 face
    # 0.25 · 0.5² · ln2; one positive
    assert refined["loss_cls_2"].item() == pytest.approx((0.75 + 0.25) * 0.25 * ln2, rel=1e-6)
    assert refined["loss_box_2"].item() == pytest.approx(0.0, abs=1e-7)
    # the same outputs without refinement (dx = 0): A2 stays background, no positive at all
    raw = compute_losses(_outputs(box1_dx=0.0), gt, cfg, stc_threshold=0.99)
    assert raw["loss_cls_2"].item() == pytest.approx(2 * 0.75 * 0.25 * ln2, rel=1e-6)


def test_stc_filters_second_step_classification_only_unless_asked():
    # Face exactly on A1 = [100, 100, 110, 110], whose first-step face probability 0.0067 ≤ 0.01: STC
    # removes A1 from the step-2 classification loss. Its step-2 regression (dx = 0.5 against a target
    # of 0) still counts, as docs/model.md says: smooth-L1(0.5, β = 1/9) = 0.5 − 0.5 · (1/9) = 0.44444.
    gt = [torch.tensor([[100.0, 100.0, 110.0, 110.0]])]
    out = _outputs()
    out.box2[0] = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]], requires_grad=True)
    ln2 = math.log(2.0)
    losses = compute_losses(out, gt, LossConfig(allow_low_quality_matches=False), stc_threshold=0.99)
    assert losses["loss_box_2"].item() == pytest.approx(0.5 - 0.5 / 9, rel=1e-6)
    # classification: A0 and A2 background at logit 0, A1 (the face) filtered; no positive → divide by 1
    assert losses["loss_cls_2"].item() == pytest.approx(2 * 0.75 * 0.25 * ln2, rel=1e-6)
    ours = compute_losses(out, gt, LossConfig(allow_low_quality_matches=False, stc_filter_regression=True),
                          stc_threshold=0.99)
    assert ours["loss_box_2"].item() == 0.0  # [ours] the filtered positive leaves the box loss too


LOGIT_PRIOR_BF16 = -4.59375  # the prior logit −ln 99 = −4.59512 rounded to bf16: p = 0.010014 > 0.01


def test_stc_filter_decides_in_float32_under_bf16():
    # Every anchor starts at the prior. Under bf16 autocast its logit is −4.59375, p = 0.010014: it
    # survives STC. In bf16, sigmoid rounds to 0.0100098 and 0.01 itself to 0.0100098, so "p > 0.01"
    # was False and STC dropped every anchor at the start of training.
    cls1 = {2: torch.tensor([[LOGIT_PRIOR_BF16, -4.625]], dtype=torch.bfloat16)}  # −4.625: p = 0.0097
    assert stc_keep_masks((2,), cls1, [2], batch_size=1, face_threshold=0.01)[0].tolist() == [[True, False]]


def test_outputs_of_bf16_heads_give_float32_losses_and_predictions():
    # The hand-built example with every head output in bf16 (as under autocast): same losses as in
    # float32 (the values are exact in bf16), float32 scores and boxes.
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    cfg = LossConfig(allow_low_quality_matches=False)
    exact = compute_losses(_outputs(box1_dx=0.5, box2_dx=0.5), gt, cfg, stc_threshold=0.99)
    out = _outputs(box1_dx=0.5, box2_dx=0.5)
    out.cls1 = {k: v.detach().bfloat16() for k, v in out.cls1.items()}
    out.box1 = {k: v.detach().bfloat16() for k, v in out.box1.items()}
    out.cls2 = [v.detach().bfloat16() for v in out.cls2]
    out.box2 = [v.detach().bfloat16() for v in out.box2]
    losses = compute_losses(out, gt, cfg, stc_threshold=0.99)
    for name, value in losses.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(exact[name].item(), rel=1e-6), name
    scores, boxes = dense_predictions(out, stc_face_threshold=0.01)
    assert scores.dtype == boxes.dtype == torch.float32
    assert boxes[0, 2].tolist() == pytest.approx([20.0, 0.0, 40.0, 20.0])
