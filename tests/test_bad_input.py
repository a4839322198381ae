"""Bad input: one line naming the problem and the fix, a non-zero exit, no traceback.

Each row of the issue's matrix has a test here, driving the installed ``harness`` the
way a user would. The property-based tests feed random override strings to the CLI's
checker in-process and require a one-line answer or None, never an exception.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAST, records_in, run_cli

from harness import cli

TESTS = Path(__file__).parent
FAULTS = {"HARNESS_PLUGINS": "faultplugins.faulty", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "harness: error:" in line]


def assert_one_line(proc, needle: str, code: int) -> str:
    lines = error_lines(proc.stderr)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- rejected before anything runs (exit 2, no record) -------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["backend=nope"], "unknown backend 'nope'; available: "),
        (["+scenario=nope"], "unknown scenario 'nope'"),
        (["model=nope"], "unknown model 'nope'"),
        (["dataset=nope"], "unknown dataset 'nope'"),
        (["-m", "backend=onnxruntime,nope"], "unknown backend 'nope'"),
        (["+scenario=bert_fp32", "scenario.kind=nope"], "unknown scenario kind 'nope'"),
        (["+scenario=bert_fp32", "scenario.batch_size=abc"], "scenario.batch_size"),
        (["+scenario=bert_fp32", "scenario.batch_size=-1"], "scenario.batch_size: must be >= 1"),
        (["-m", "+scenario=bert_fp32", "scenario.batch_size=8,-1"], "scenario.batch_size: must be >= 1"),
        (["backend.intra_op_threads=-2"], "backend.intra_op_threads"),
        (["+scenario=bert_fp32", "scenario.nope=1"], "scenario.nope"),
        (["++launcher.timeout_s=-5"], "launcher.timeout_s: must be > 0"),
        (["++launcher.timeout_s=soon"], "launcher.timeout_s"),
        (["++launcher.isolation=thread"], "launcher.isolation: 'thread' is not one of process, inline"),
        (["++launcher.memory_limit_mb=3"], "launcher.memory_limit_mb"),
        (["++overwrite=maybe"], "overwrite"),
        (["scenario.batch_size=[1,"], "scenario.batch_size"),
        (["++model.path=/nope/checkpoint"], "model.path '/nope/checkpoint' does not exist (fix: "),
        (["dataset.kind=files", "++dataset.path=/nope/data.csv"], "dataset.path '/nope/data.csv' does not exist"),
    ],
)
def test_rejected_with_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_cli(*args, cwd=tmp_path, timeout=300)
    line = assert_one_line(proc, needle, 2)
    assert "fix" in line or "available" in line or "Could not" in line or "must" in line or "not one of" in line
    assert not list((tmp_path / "results").glob("*.json")) if (tmp_path / "results").exists() else True


def test_sweep_key_only_some_choices_have_says_to_use_double_plus(tmp_path):
    proc = run_cli("-m", "backend=numpy,flaky", "+scenario=quick", "backend.marker=x", cwd=tmp_path, env=FAULTS)
    assert_one_line(proc, "fix: write ++key=value", 2)


# --- rejected by the run (a record explains it) ----------------------------------------------------


def test_checkpoint_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("+scenario=bert_fp32", *FAST, f"++model.path={tmp_path / 'empty'}", cwd=tmp_path)
    assert_one_line(proc, "is not a checkpoint folder (no config.json) (fix: ", 2)
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "failed" and rec["error"]["type"] == "ConfigError"


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("reviews.parquet", b"this is not parquet at all", "cannot read"),
        ("reviews.csv", b"text,sentiment\ngreat film,1\nawful film,0\nfine,1\n", "label column 'label' not found (columns: text, sentiment)"),
        ("reviews.csv", b"", "cannot read"),
    ],
    ids=["unreadable", "mislabeled", "empty"],
)
def test_bad_dataset_file(name, content, needle, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    proc = run_cli("+scenario=bert_fp32", *FAST, "dataset.kind=files", f"++dataset.path={path}", cwd=tmp_path)
    line = assert_one_line(proc, needle, 2)
    assert "fix:" in line


@pytest.mark.slow
def test_corrupt_onnx_in_the_cache_is_rebuilt_not_trusted(tmp_path):
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    assert run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path, env=env).returncode == 0
    (cached,) = (tmp_path / "cache").glob("onnx/*/model.onnx")
    cached.write_bytes(b"\x08\x07garbage, not a protobuf of a model")
    proc = run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    second = sorted(records_in(tmp_path / "results"), key=lambda r: r["created"] + r["run_id"])
    assert [r["metrics"]["export"]["cached"] for r in second].count(False) == 2  # rebuilt, not reused
    import onnx

    onnx.checker.check_model(str(cached))


def test_unavailable_hardware(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli("+scenario=bert_fp32", "backend=pytorch", "backend.device=cuda", *FAST, cwd=tmp_path)
    line = assert_one_line(proc, "unavailable: backend 'pytorch' is unavailable: no CUDA device", 3)
    assert "(fix: " in line


@pytest.mark.parametrize("stage", ["probe", "prepare"])
def test_plugin_raising_in_probe_or_prepare(stage, tmp_path):
    proc = run_cli("backend=raises", f"backend.stage={stage}", "+scenario=quick", cwd=tmp_path, env=FAULTS)
    line = assert_one_line(proc, f"RuntimeError: injected failure in {stage}", 1)
    assert "plugin 'faulty'" in line and "(fix: " in line
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "failed" and rec["error"]["traceback"]


def test_debug_switch_shows_the_traceback(tmp_path):
    proc = run_cli("backend=raises", "+scenario=quick", cwd=tmp_path, env={**FAULTS, "HARNESS_DEBUG": "1"})
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "injected failure" in proc.stderr


# --- property-based: the checker never raises -------------------------------------------------------

KEYS = st.sampled_from([
    "backend", "scenario", "+scenario", "model", "dataset", "~model", "+model", "++backend",
    "scenario.batch_size", "scenario.seq_len", "backend.intra_op_threads", "launcher.timeout_s",
    "++launcher.timeout_s", "+launcher", "results_dir", "hydra.run.dir", "hydra/launcher", "hydra.sweeper.params",
    "model.config.hidden_size", "a.b.c", "", " ", "=", "..", "@", "scenario@x", "backend@_global_", "ü", "$x",
])
VALUES = st.one_of(
    st.sampled_from([
        "onnxruntime", "pytorch", "bert_fp32", "bert_tiny", "sentiment", "nope", "8", "-1", "0", "1e9", "abc",
        "null", "true", "[1,2", "[1,2]", "{a:1}", "${oc.env:HOME}", "${nope}", "'q'", "\"", "a,b", "onnxruntime,pytorch",
        "range(1,4)", "range(0,1000000000)", "choice(a,b)", "glob(*)", "interval(0,1)", "tag(x,choice(1,2))",
        "sort(3,1)", "shuffle(a,b)", "", " ", "=", "\\", "ü", "a b",
    ]),
    st.text(max_size=12),
)
OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES),
    st.sampled_from(["-m", "--multirun", "--cfg", "job", "-c", "--info", "-h", "--nope", "-x"]),
    st.text(max_size=20),
)


@pytest.fixture(scope="module")
def checker():
    from harness.plugins import load_plugins

    plugins = load_plugins()
    searchpath = plugins.config_searchpath()
    return searchpath, cli.group_options(searchpath), plugins.registry


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=st.lists(OVERRIDE, max_size=4))
def test_random_overrides_get_one_line_or_none(checker, args):
    searchpath, options, registry = checker
    problem, jobs = cli.precheck(args, searchpath, options, registry)
    assert problem is None or (isinstance(problem, str) and problem and "\n" not in problem)
    assert jobs is None or jobs >= 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS, value=VALUES)
def test_group_choice_check_never_raises(checker, key, value):
    _, options, _ = checker
    problem = cli.check_group_choices([f"{key}={value}"], options)
    assert problem is None or "\n" not in problem


def test_known_good_command_lines_pass_the_check(checker):
    searchpath, options, registry = checker
    assert cli.precheck(["+scenario=bert_fp32", "backend=onnxruntime"], searchpath, options, registry) == (None, 1)
    assert cli.precheck(["-m", "+scenario=bert_fp32", "backend=onnxruntime,pytorch", "scenario.batch_size=1,8"], searchpath, options, registry) == (None, 4)
    assert cli.precheck(["-m", "backend=glob(onnx*)"], searchpath, options, registry)[0] is None
    assert cli.precheck(["--cfg", "job"], searchpath, options, registry) == (None, None)
    assert cli.precheck(["-m", "scenario.batch_size=range(1,1000000000)"], searchpath, options, registry) == (None, None)
    problem, _ = cli.precheck(["-m", "backend=glob(zzz*)"], searchpath, options, registry)
    assert problem.startswith("backend=glob(zzz*) matches no backend")
