"""The training contract on the PyTorch backend, and backends that cannot train."""

from __future__ import annotations

import numpy as np
import pytest

from harness.backend import TrainingSession
from harness.data import DatasetOptions, load_dataset
from harness.errors import ConfigError, Unsupported
from harness.models import ModelOptions, load_model
from harness.training.options import TrainingOptions
from harness.training.plan import TrainingPlan

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=200)


def pytorch_backend(**options):
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions

    return PyTorchBackend(PyTorchOptions(**options))


def tiny_bert():
    return load_model(ModelOptions(name="t", config=TINY))


def batch(n=4, seq=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(5, 200, (n, seq)).astype(np.int64),
        "attention_mask": np.ones((n, seq), np.int64),
        "labels": rng.integers(0, 2, n).astype(np.int64),
    }


def plan(model, **overrides):
    return TrainingPlan.from_options(TrainingOptions(**{"warmup_steps": 0, "warmup_ratio": 0.0, **overrides}), model.input_names, total_steps=10)


def test_pytorch_session_trains_and_predicts():
    model = tiny_bert()
    session = pytorch_backend().prepare_training(model.module, plan(model, lr=1e-2))
    assert isinstance(session, TrainingSession)
    inputs = session.load(batch())
    losses = [session.train_step(inputs) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # it learns a fixed batch
    logits = session.predict(inputs)
    assert logits.shape == (4, 2) and logits.dtype == np.float32
    assert model.module.training  # predict puts the module back into train mode
    assert session.memory()["peak_rss_mib"] > 0


def test_gradient_accumulation_updates_every_k_micro_batches():
    import torch

    model = tiny_bert()
    session = pytorch_backend().prepare_training(model.module, plan(model, grad_accum_steps=3))
    before = [p.detach().clone() for p in model.module.parameters()]
    inputs = session.load(batch())
    for _ in range(2):
        session.train_step(inputs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))  # not yet
    session.train_step(inputs)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))
    assert session.scheduler.last_epoch == 1  # one optimizer step = one schedule step


def test_gradient_clipping_bounds_the_update():
    model = tiny_bert()
    session = pytorch_backend().prepare_training(model.module, plan(model, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=1e-3))
    before = [p.detach().clone() for p in model.module.parameters()]
    session.train_step(session.load(batch()))
    import torch

    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.module.parameters(), before)))
    assert float(step) <= 1e-3 * 1.001  # SGD with lr 1: the update is the clipped gradient


def test_bf16_autocast_trains_on_cpu():
    model = tiny_bert()
    session = pytorch_backend().prepare_training(model.module, plan(model, precision="bf16"))
    assert np.isfinite(session.train_step(session.load(batch())))


def test_fp16_training_on_cpu_is_unsupported_with_the_fix():
    model = tiny_bert()
    with pytest.raises(Unsupported, match="bf16"):
        pytorch_backend().prepare_training(model.module, plan(model, precision="fp16"))


def test_seed_makes_training_repeatable():
    losses = []
    for _ in range(2):
        model = tiny_bert()
        session = pytorch_backend().prepare_training(model.module, plan(model, seed=5))
        inputs = session.load(batch())
        losses.append([session.train_step(inputs) for _ in range(3)])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt", "openvino"])
def test_inference_only_backends_refuse_training(name):
    from harness.config import typed
    from harness.plugins import get_plugins

    registry = get_plugins().registry
    if name not in registry.backends:
        pytest.skip(f"backend {name} is not registered here")
    cls = registry.backends[name]
    backend = cls(typed(cls.options_type, {}, "backend"))
    assert backend.capabilities().training is False
    with pytest.raises(Unsupported, match="cannot train"):
        backend.prepare_training(None, None)


def test_dropout_sets_config_and_layers_and_resnet_refuses_it():
    import torch

    from harness.training.job import set_dropout

    model = tiny_bert()
    set_dropout(model, 0.25)
    layers = [m for m in model.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert layers and all(m.p == 0.25 for m in layers)
    assert model.module.model.config.hidden_dropout_prob == 0.25
    assert model.module.model.config.attention_probs_dropout_prob == 0.25
    resnet = load_model(ModelOptions(name="r", family="resnet", num_labels=10, config=dict(num_channels=1, embedding_size=8, hidden_sizes=[8], depths=[1])))
    with pytest.raises(ConfigError, match="no dropout layers"):
        set_dropout(resnet, 0.1)


def test_model_and_dataset_must_fit():
    from harness.training.job import check_fit

    model = tiny_bert()
    digits = load_dataset(DatasetOptions(name="digits", kind="digits", image_size=8))
    with pytest.raises(ConfigError, match="takes input_ids"):
        check_fit(model, digits, ModelOptions(name="t"))
    text = load_dataset(DatasetOptions(train_size=20, eval_size=10), seq_len=8)
    with pytest.raises(ConfigError, match="2 labels but model.num_labels=3") as info:
        check_fit(model, text, ModelOptions(name="t", num_labels=3))
    assert info.value.fix == "set model.num_labels=2"


def test_train_model_runs_the_loop_and_reports_curves(tmp_path):
    from harness.training.job import train_model, training_metrics
    from harness.training.plan import World

    model = tiny_bert()
    data = load_dataset(DatasetOptions(train_size=64, eval_size=16), seq_len=8)
    options = TrainingOptions(batch_size=8, max_steps=6, eval_interval=3, log_interval=2, warmup_steps_excluded=1, target_accuracy=0.01, seq_len=8)
    lines: list[str] = []
    trained = train_model(pytorch_backend(), model, data, options, tensorboard_dir=str(tmp_path / "tb"), report=lines.append)
    section = training_metrics(trained, options, data, World())
    assert section["steps"] == 6 and section["step_latency_ms"]["count"] == 5
    assert [p[0] for p in section["eval_curve"]] == [3, 6] and [p[0] for p in section["loss_curve"]] == [2, 4, 6]
    assert section["time_to_target_step"] == 3 and section["time_to_target_s"] > 0
    assert section["tokens_per_s"] == pytest.approx(section["samples_per_s"] * 8)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert any("eval accuracy" in line for line in lines)
    assert not model.module.training  # handed back in eval mode


# --- the shared torch session's fp16 loss-scaler branch, exercised on the CPU ---------------


def _cpu_session(model, scaler, **overrides):
    """The shared session on the CPU with ``scaler`` (the pytorch backend sets one for fp16 on CUDA)."""
    import contextlib

    import torch

    from harness.training.torch_session import TorchTrainingSession

    class CpuSession(TorchTrainingSession):
        def _autocast(self):
            return contextlib.nullcontext()

        def load(self, host_batch):
            return {name: torch.as_tensor(value) for name, value in host_batch.items()}

    session = CpuSession(model.module, plan(model, optimizer="sgd", lr=0.1, **overrides), torch.device("cpu"))
    session.scaler = scaler
    return session


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_a_loss_scaler_steps_like_the_plain_loss(grad_clip):
    """Scaled backward, unscale before clipping, scaler step: the same update as unscaled fp32."""
    import torch

    torch.manual_seed(0)
    plain_model, scaled_model = tiny_bert(), tiny_bert()
    scaled_model.module.load_state_dict(plain_model.module.state_dict())
    plain = _cpu_session(plain_model, None, grad_clip=grad_clip, dropout=0.0)
    scaled = _cpu_session(scaled_model, torch.amp.GradScaler("cpu", init_scale=2.0**10), grad_clip=grad_clip, dropout=0.0)
    plain_model.module.eval(), scaled_model.module.eval()  # no dropout: both see the same forward
    for seed in range(3):
        inputs = plain.load(batch(seed=seed))
        assert plain.train_step(inputs) == pytest.approx(scaled.train_step(inputs), rel=1e-5)
    for a, b in zip(plain_model.module.parameters(), scaled_model.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # the skipped step
def test_a_loss_scaler_skips_an_overflowing_step_and_backs_off():
    import torch

    model = tiny_bert()
    model.module.eval()
    session = _cpu_session(model, torch.amp.GradScaler("cpu", init_scale=2.0**10))
    before = [p.detach().clone() for p in model.module.parameters()]
    session.loss_fn = lambda logits, inputs: logits.sum() * float("inf")  # every gradient overflows
    session.train_step(session.load(batch()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))  # the step was skipped
    assert session.scaler.get_scale() < 2.0**10
