"""The command-line check reads a sweep exactly as Hydra runs it, so each job is validated once."""

from __future__ import annotations

import pytest

from harness import compose, precheck
from harness.plugins import load_plugins

SWEEPS = [
    ["backend=onnxruntime,pytorch", "scenario.batch_size=1,8"],
    ["scenario=bert_fp32", "scenario.batch_size=range(1,4)", "++launcher.timeout_s=5"],
    ["model=bert_tiny", "backend=choice(onnxruntime,openvino)", "~hardware"],
    ["scenario.seq_len=16,32", "backend=pytorch"],
]


@pytest.mark.parametrize("overrides", SWEEPS)
def test_sweep_expansion_matches_hydras_basic_sweeper(overrides):
    """Same jobs, same order, same override strings as the sweeper Hydra launches (the
    task function finds each checked job by them). Hydra's own splitter is read here only
    to compare: the harness itself uses the public override parser."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    assert precheck.sweep_jobs(overrides) == hydra_jobs


def test_the_check_keeps_each_validated_job_under_its_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plugins = load_plugins()
    searchpath = plugins.config_searchpath()
    args = ["-m", "+scenario=bert_fp32", "model=bert_tiny", "backend=onnxruntime,pytorch", "launcher.host_lock=false"]
    checked = precheck.check(args, searchpath, compose.group_options(searchpath), plugins.registry)
    assert checked.problem is None and checked.count == 2
    assert set(checked.jobs) == {("scenario=bert_fp32", "model=bert_tiny", f"backend={b}", "launcher.host_lock=False") for b in ("onnxruntime", "pytorch")}
    job = checked.jobs[("scenario=bert_fp32", "model=bert_tiny", "backend=pytorch", "launcher.host_lock=False")]
    assert job.spec.backend_name == "pytorch" and job.spec.job.key and not job.launcher.host_lock


def test_parse_args_reads_hydras_documented_flags():
    parsed = precheck.parse_args(["-m", "--cfg", "job", "backend=a", "x=1"])
    assert parsed is not None and parsed.multirun and parsed.cfg == "job" and parsed.overrides == ["backend=a", "x=1"]
    assert not precheck.runs_jobs(parsed)
    assert precheck.runs_jobs(precheck.parse_args(["backend=a"]))
    assert precheck.parse_args(["--cfg", "nonsense"]) is None  # Hydra refuses it itself


def test_plus_scenario_is_the_same_choice_as_scenario():
    assert compose.normalise(["+scenario=bert_int8", "+scenario@x=y", "++scenario.batch_size=2", "+foo=1"]) == [
        "scenario=bert_int8",
        "scenario@x=y",
        "++scenario.batch_size=2",
        "+foo=1",
    ]
