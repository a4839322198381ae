"""Knowledge distillation: the KD loss on hand-computed logits, and the scenario end to end."""

from __future__ import annotations

import math

import pytest

from conftest import records_in, run_cli

from harness import records
from harness.config import typed
from harness.errors import ConfigError

# Teacher logits [ln 3, 0] give probabilities [3/4, 1/4]; student logits [0, 0] give [1/2, 1/2].
KL_T1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(teacher || student) = 0.130812
CE_LABEL0 = -math.log(0.5)  # = 0.693147


def _kd(student, teacher, labels, temperature, alpha):
    import torch

    from harness.training.kd import kd_loss

    return float(kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature, alpha))


def test_kd_loss_at_temperature_one_mixes_kl_and_cross_entropy():
    assert KL_T1 == pytest.approx(0.130812, abs=1e-6)
    got = _kd([[0.0, 0.0]], [[math.log(3.0), 0.0]], [0], temperature=1.0, alpha=0.5)
    assert got == pytest.approx(0.5 * KL_T1 + 0.5 * CE_LABEL0, abs=1e-6)  # 0.411980


def test_kd_loss_scales_the_soft_term_by_t_squared():
    # T = 2: teacher [ln3 / 2, 0] -> p = sqrt(3) / (1 + sqrt(3)) = 0.633975; the student stays uniform.
    p = math.sqrt(3.0) / (1.0 + math.sqrt(3.0))
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)  # 0.036397
    got = _kd([[0.0, 0.0]], [[math.log(3.0), 0.0]], [1], temperature=2.0, alpha=1.0)
    assert got == pytest.approx(4.0 * kl, abs=1e-6)  # 0.145588; alpha=1: labels ignored


def test_kd_loss_is_a_batch_mean_and_alpha_zero_is_plain_cross_entropy():
    # second row: teacher equal to student, KL 0 -> the batch mean halves the first row's KL
    got = _kd([[0.0, 0.0], [1.0, 0.0]], [[math.log(3.0), 0.0], [1.0, 0.0]], [0, 0], temperature=1.0, alpha=1.0)
    assert got == pytest.approx(KL_T1 / 2, abs=1e-6)
    ce_row2 = -math.log(math.e / (math.e + 1.0))
    got = _kd([[0.0, 0.0], [1.0, 0.0]], [[5.0, -5.0], [0.0, 9.0]], [0, 0], temperature=3.0, alpha=0.0)
    assert got == pytest.approx((CE_LABEL0 + ce_row2) / 2, abs=1e-6)


def test_kd_loss_object_reads_teacher_logits_and_labels_from_the_batch():
    import torch

    from harness.training.kd import KDLoss

    inputs = {"teacher_logits": torch.tensor([[math.log(3.0), 0.0]]), "labels": torch.tensor([0])}
    assert float(KDLoss(1.0, 0.5)(torch.zeros(1, 2), inputs)) == pytest.approx(0.5 * KL_T1 + 0.5 * CE_LABEL0, abs=1e-6)


@pytest.mark.parametrize("node, key", [({"temperature": 0}, "scenario.temperature"), ({"alpha": 1.5}, "scenario.alpha")])
def test_bad_distillation_options_name_the_key(node, key):
    from harness.scenarios.distillation import DistillationOptions

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        typed(DistillationOptions, node, "scenario")


@pytest.mark.slow
def test_distill_on_tiny_shapes_reports_student_teacher_and_speedup(tmp_path):
    tiny = ["model=bert_tiny", "scenario.max_steps=12", "scenario.eval_interval=0", "scenario.warmup_steps_excluded=2"]
    teacher = run_cli("+scenario=bert_train", "backend=pytorch", *tiny, cwd=tmp_path, timeout=300)
    assert teacher.returncode == 0, teacher.stderr
    (trained,) = records_in(tmp_path / "results")
    folder = trained["metrics"]["training"]["checkpoint"]
    proc = run_cli(
        "+scenario=bert_distill",
        "backend=pytorch",
        *tiny,
        f"scenario.teacher={folder}",
        "scenario.student.hidden_size=32",
        "scenario.student.intermediate_size=64",
        "scenario.student.num_hidden_layers=1",
        "scenario.warmup_iters=1",
        "scenario.min_iters=3",
        "scenario.min_duration_s=0.1",
        f"results_dir={tmp_path / 'distill'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "distill")
    records.validate(rec)
    assert rec["status"] == "ok" and rec["scenario"]["kind"] == "distillation"
    kd = rec["metrics"]["distillation"]
    assert 0 <= kd["student_accuracy"] <= 1 and 0 <= kd["teacher_accuracy"] <= 1
    assert kd["student_params"] < kd["teacher_params"] and kd["speedup"] > 0
    assert kd["teacher_source"] == f"checkpoint:{folder}"
    assert rec["metrics"]["accuracy"]["reference"] == kd["teacher_accuracy"]
    assert rec["metrics"]["training"]["steps"] == 12
    assert rec["model"]["params"] == kd["student_params"]
