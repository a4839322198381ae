"""Model cards: a randomly initialised model is described without being built, and built
only when something needs its module, with the same weights the card describes.

The run that reuses every artifact (export, eager references, FLOP count) must never build
the model: that is the fixed cost issue 21 is about. And a deferred model must never be
another model: its build is checked against the card.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from harness import cache, model_cards
from harness.errors import HarnessError
from harness.models import ModelOptions, load_model, module_digest

from conftest import FAST, records_in, run_cli

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000)


def _options(**overrides) -> ModelOptions:
    return ModelOptions(**{"name": "bert_card", "config": dict(TINY), **overrides})


def test_second_load_is_deferred_and_describes_the_same_model(tmp_path):
    root = str(tmp_path)
    first = load_model(_options(), defer=True, cache_root=root)  # no card yet: built, card written
    assert first.built and model_cards.card_path(_options(), root).is_file()
    second = load_model(_options(), defer=True, cache_root=root)
    assert not second.built
    assert second.weights_digest() == first.weights_digest()
    assert second.structure() == repr(first.module)
    assert (second.params, second.input_names, second.output_names, second.source) == (first.params, first.input_names, first.output_names, first.source)
    assert cache.content_key(second.config) == cache.content_key(first.config)
    module = second.module  # first use builds it, checked against the card
    assert second.built and module_digest(module) == first.weights_digest()
    assert second.weights_digest() == first.weights_digest()  # now computed from the module


def test_a_card_is_keyed_by_what_makes_the_weights(tmp_path):
    root = str(tmp_path)
    load_model(_options(), defer=True, cache_root=root)
    assert not load_model(_options(name="other_name"), defer=True, cache_root=root).built  # the name does not change weights
    assert load_model(_options(seed=1), defer=True, cache_root=root).built
    assert load_model(_options(num_labels=3), defer=True, cache_root=root).built
    assert load_model(_options(config={**TINY, "hidden_size": 64}), defer=True, cache_root=root).built


def test_without_defer_or_with_a_folder_the_model_is_built(tmp_path):
    root = str(tmp_path)
    built = load_model(_options(), cache_root=root)
    assert load_model(_options(), cache_root=root).built  # defer is opt-in
    folder = tmp_path / "ckpt"
    built.module.model.save_pretrained(folder)
    assert load_model(_options(path=str(folder)), defer=True, cache_root=root).built


def test_a_build_that_differs_from_its_card_is_an_error_and_removes_the_card(tmp_path):
    root = str(tmp_path)
    load_model(_options(), cache_root=root)
    path = model_cards.card_path(_options(), root)
    card = json.loads(path.read_text())
    card["spot"] = "0" * 64  # as if this machine's random init gave other weights
    cache.atomic_write(path, json.dumps(card))
    cache.seal(path)
    deferred = load_model(_options(), defer=True, cache_root=root)
    with pytest.raises(HarnessError, match="other weights than its cached model card"):
        deferred.module
    assert not path.exists()
    assert load_model(_options(), defer=True, cache_root=root).built  # the next load builds and writes a new card


def test_a_damaged_card_is_discarded_with_one_line(tmp_path, capsys):
    root = str(tmp_path)
    load_model(_options(), cache_root=root)
    path = model_cards.card_path(_options(), root)
    path.write_text(path.read_text()[:-20])
    assert load_model(_options(), defer=True, cache_root=root).built
    assert "does not match its checksum" in capsys.readouterr().err
    assert not load_model(_options(), defer=True, cache_root=root).built  # rewritten by that build


def test_a_deferred_model_can_be_copied_with_a_new_module(tmp_path):
    """Pruning makes its model with dataclasses.replace: that reads (so builds) the module."""
    root = str(tmp_path)
    load_model(_options(), cache_root=root)
    deferred = load_model(_options(), defer=True, cache_root=root)
    copy = dataclasses.replace(deferred, module=deferred.module, params=1)
    assert copy.built and copy.params == 1 and copy.weights_digest() == deferred.weights_digest()


def test_eager_reference_outputs_are_cached_by_weights_and_inputs(tmp_path, tiny_model, tiny_batch, monkeypatch):
    from harness import export

    root = str(tmp_path)
    first = export.cached_eager_outputs(tiny_model, tiny_batch, root)
    np.testing.assert_array_equal(first, export.eager_outputs(tiny_model, tiny_batch))

    def no_forward(*_args):
        raise AssertionError("the cached reference was computed again")

    monkeypatch.setattr(export, "eager_outputs", no_forward)
    np.testing.assert_array_equal(export.cached_eager_outputs(tiny_model, tiny_batch, root), first)
    other = {name: value.copy() for name, value in tiny_batch.items()}
    other["input_ids"][0, 0] += 1
    with pytest.raises(AssertionError, match="computed again"):
        export.cached_eager_outputs(tiny_model, other, root)


@pytest.mark.slow
def test_an_onnx_run_that_reuses_everything_does_not_build_the_model(tmp_path):
    """The second ONNX Runtime run of the same model and shapes finds its model card,
    export, eager reference, FLOP count and accuracy reference cached: its record says
    the model was not built, and it describes the same model as the first."""
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}  # its own cache: the first run must build
    results = []
    for run in range(2):
        done = run_cli(
            "+scenario=bert_fp32", "backend=onnxruntime", *FAST, "scenario.accuracy.limit=8", f"results_dir={tmp_path / str(run)}", cwd=tmp_path, env=env
        )
        assert done.returncode == 0, done.stderr
        (record,) = records_in(tmp_path / str(run))
        results.append(record)
    first, second = results
    assert (first["model"]["built"], second["model"]["built"]) == (True, False)
    assert second["model"]["params"] == first["model"]["params"]
    assert second["metrics"]["export"]["key"] == first["metrics"]["export"]["key"] and second["metrics"]["export"]["cached"]
    assert second["metrics"]["accuracy"]["reference"] == first["metrics"]["accuracy"]["reference"]
