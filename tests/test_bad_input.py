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

from harness import compose, precheck

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
        # hardening (issue 15): typos, shapes, sizes and outputs, all before anything is built
        (["+foo=1"], "unknown top-level config key 'foo'"),
        (["+result_dir=/tmp/x"], "unknown top-level config key 'result_dir' (fix: did you mean results_dir?"),
        (["++resuls_dir=/tmp/x"], "did you mean results_dir?"),
        (["+scenario=bert_fp32", "scenario.batch_sise=3"], "Could not override 'scenario.batch_sise'"),
        (["launcher.timout_s=3"], "(fix: did you mean launcher.timeout_s?)"),
        (["+scenario=bert_fp32", "scenario.seq_len=1024"], "scenario.seq_len=1024 is longer than the 512 positions"),
        (["+scenario=bert_fp32", "scenario.batch_size=99999999999999999999"], "scenario.batch_size=99999999999999999999 needs at least"),
        (["+scenario=bert_train", "scenario.eval_batch_size=10000000000000"], "scenario.eval_batch_size=10000000000000 needs at least"),
        (["model.config.hidden_size=65"], "hidden_size=65 of model 'bert_small' is not a multiple of num_attention_heads=4"),
        (["model.config.vocab_size=20"], "vocab_size=20 of model 'bert_small' is smaller than"),
        (["cache_dir=/etc/hostname"], "cache_dir '/etc/hostname' cannot be a folder: '/etc/hostname' is a file"),
        (["results_dir=/etc/hostname/sub"], "results_dir '/etc/hostname/sub' cannot be a folder"),
        (["-m", "scenario.batch_size=range(1,1000001)"], "this sweep has 1,000,000 jobs, more than the 1,000 allowed"),
        (["-m", "+scenario=bert_fp32", "scenario.seq_len=64,2048"], "scenario.seq_len=2048 is longer than the 512 positions"),
        (["model=resnet_small"], "model.family=resnet does image-classification but dataset 'sentiment' is text"),
        (["model=bert_tiny", "dataset=digits"], "model.family=bert does text-classification but dataset 'digits'"),
        (["model=resnet_small", "dataset=digits", "model.num_labels=2"], "has 10 label values (0, 1, 2, 3, 4, 5, 6, 7, ...)"),
        (["++model.checkpoint=/nope/ckpt"], "model.checkpoint '/nope/ckpt' does not exist"),
        (["++launcher.memory_limit_mb=64", "+scenario=bert_fp32", "scenario.batch_size=100000"], "more than the 64 MiB this run may use"),
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


def test_max_jobs_override(monkeypatch, checker):
    searchpath, options, registry = checker
    args = ["-m", "+scenario=bert_fp32", "scenario.batch_size=range(1,1500)"]
    problem, _ = precheck.precheck(args, searchpath, options, None)
    assert problem.startswith("this sweep has 1,499 jobs") and "export HARNESS_MAX_JOBS=1499" in problem
    monkeypatch.setenv("HARNESS_MAX_JOBS", "2000")
    assert precheck.precheck(args, searchpath, options, None) == (None, 1499)
    monkeypatch.setenv("HARNESS_MAX_JOBS", "lots")
    assert "is not a positive number of jobs" in precheck.precheck(args, searchpath, options, None)[0]


# --- checkpoint folders and datasets: refused before the model is built (no record) --------------


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _damaged(folder: Path, to: Path, how: str) -> Path:
    import json
    import shutil

    shutil.copytree(folder, to)
    if how == "truncated config":
        (to / "config.json").write_text((to / "config.json").read_text()[:50])
    elif how == "zero-byte weights":
        (to / "model.safetensors").write_bytes(b"")
    elif how == "weights of another config":
        config = json.loads((to / "config.json").read_text())
        (to / "config.json").write_text(json.dumps({**config, "hidden_size": 128, "intermediate_size": 512}))
    elif how == "no config":
        (to / "config.json").unlink()
    return to


@pytest.mark.parametrize(
    "how, extra, needle",
    [
        ("truncated config", [], "config.json is not valid JSON"),
        ("zero-byte weights", [], "model.safetensors is empty (0 bytes)"),
        ("weights of another config", [], "has weights that do not match its config.json"),
        ("no config", [], "is not a checkpoint folder (no config.json) (fix: "),
        ("intact", ["model.family=resnet", "dataset=digits"], "model.family=resnet but"),
    ],
)
def test_bad_checkpoint_folder(bert_folder, how, extra, needle, tmp_path):
    folder = _damaged(bert_folder, tmp_path / "ckpt", how)
    proc = run_cli("+scenario=bert_fp32", *FAST, f"++model.path={folder}", *extra, cwd=tmp_path)
    line = assert_one_line(proc, needle, 2)
    assert "a bug in plugin" not in line and "fix:" in line
    assert not (tmp_path / "results").exists() or not records_in(tmp_path / "results")


@pytest.mark.parametrize(
    "name, content, extra, needle",
    [
        ("reviews.parquet", b"this is not parquet at all", [], "cannot read"),
        ("reviews.csv", b"text,sentiment\ngreat film,1\nawful film,0\nfine,1\n", [], "label column 'label' not found (columns: text, sentiment)"),
        ("reviews.csv", b"", [], "cannot read"),
        (
            "reviews.csv",
            b"text,label\n" + b"".join(b"film %d,%d\n" % (i, i % 5) for i in range(20)),
            [],
            "has 5 label values (0, 1, 2, 3, 4) but model 'bert_tiny' has num_labels=2",
        ),
        ("reviews.csv", b"text,label\n" + b"".join(b"film %d,%d\n" % (i, -1 if i % 2 else 1) for i in range(20)), [], "label column has negative values (-1)"),
        ("reviews.csv", b"text,label\n" + b"".join(b"film %d,%s\n" % (i, b"abc"[i % 3 : i % 3 + 1]) for i in range(20)), [], "has 3 label values (a, b, c)"),
    ],
    ids=["unreadable", "mislabeled", "empty", "five-labels-two-classes", "minus-one", "three-names-two-classes"],
)
def test_bad_dataset_file(name, content, extra, needle, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    proc = run_cli("+scenario=bert_fp32", *FAST, "dataset.kind=files", f"++dataset.path={path}", *extra, cwd=tmp_path)
    line = assert_one_line(proc, needle, 2)
    assert "fix:" in line
    assert not (tmp_path / "results").exists() or not records_in(tmp_path / "results")


@pytest.mark.slow
def test_corrupt_caches_are_rebuilt_not_trusted(tmp_path):
    """A damaged ONNX file and a truncated accuracy reference: the next run warns once for
    each, rebuilds them and succeeds; the run after that reuses the healed entries."""
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    assert run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path, env=env).returncode == 0
    (cached,) = (tmp_path / "cache").glob("onnx/*/model.onnx")
    cached.write_bytes(b"\x08\x07garbage, not a protobuf of a model")
    (logits,) = (tmp_path / "cache").glob("accuracy/*/logits.npy")
    logits.write_bytes(logits.read_bytes()[:64])
    proc = run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("does not match its checksums (truncated or corrupted); rebuilding it") == 2
    proc = run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "rebuilding" not in proc.stderr, proc.stderr
    runs = sorted(records_in(tmp_path / "results"), key=lambda r: r["created"] + r["run_id"])
    assert [r["metrics"]["export"]["cached"] for r in runs] == [False, False, True]  # rebuilt, then reused
    assert runs[1]["metrics"]["accuracy"]["reference_source"] == "eager fp32 pytorch"  # recomputed
    assert runs[2]["metrics"]["accuracy"]["reference_source"] == "eager fp32 pytorch, cached"
    import onnx

    onnx.checker.check_model(str(cached))


@pytest.mark.slow
def test_thread_counts_beyond_the_cores_are_clamped_with_a_warning(tmp_path):
    from harness.preflight import usable_cores

    proc = run_cli("+scenario=bert_fp32", *FAST, "backend.intra_op_threads=100000", "scenario.accuracy.enabled=false", "scenario.mfu=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = usable_cores()
    assert f"backend.intra_op_threads=100000 is more than the {cores} cores this run may use; using {cores}" in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["backend"]["options"]["intra_op_threads"] == cores and rec["config"]["backend"]["intra_op_threads"] == 100000


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

KEYS = st.sampled_from(
    [
        "backend",
        "scenario",
        "+scenario",
        "model",
        "dataset",
        "~model",
        "+model",
        "++backend",
        "scenario.batch_size",
        "scenario.seq_len",
        "backend.intra_op_threads",
        "launcher.timeout_s",
        "++launcher.timeout_s",
        "+launcher",
        "results_dir",
        "hydra.run.dir",
        "hydra/launcher",
        "hydra.sweeper.params",
        "model.config.hidden_size",
        "a.b.c",
        "",
        " ",
        "=",
        "..",
        "@",
        "scenario@x",
        "backend@_global_",
        "ü",
        "$x",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            "onnxruntime",
            "pytorch",
            "bert_fp32",
            "bert_tiny",
            "sentiment",
            "nope",
            "8",
            "-1",
            "0",
            "1e9",
            "abc",
            "null",
            "true",
            "[1,2",
            "[1,2]",
            "{a:1}",
            "${oc.env:HOME}",
            "${nope}",
            "'q'",
            '"',
            "a,b",
            "onnxruntime,pytorch",
            "range(1,4)",
            "range(0,1000000000)",
            "choice(a,b)",
            "glob(*)",
            "interval(0,1)",
            "tag(x,choice(1,2))",
            "sort(3,1)",
            "shuffle(a,b)",
            "",
            " ",
            "=",
            "\\",
            "ü",
            "a b",
        ]
    ),
    st.text(max_size=12),
)
OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES),
    st.sampled_from(["-m", "--multirun", "--cfg", "job", "-c", "--info", "-h", "--nope", "-x"]),
    st.text(max_size=20),
)


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    """The CLI's checker as the command runs it, in a scratch folder: preflight creates
    (and probes) results_dir and cache_dir, relative ones included."""
    from harness.plugins import load_plugins

    plugins = load_plugins()
    searchpath = plugins.config_searchpath()
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("checker"))
    try:
        yield searchpath, compose.group_options(searchpath), plugins.registry
    finally:
        os.chdir(cwd)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=st.lists(OVERRIDE, max_size=4))
def test_random_overrides_get_one_line_or_none(checker, args):
    searchpath, options, registry = checker
    problem, jobs = precheck.precheck(args, searchpath, options, registry)
    assert problem is None or (isinstance(problem, str) and problem and "\n" not in problem)
    assert jobs is None or jobs >= 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS, value=VALUES)
def test_group_choice_check_never_raises(checker, key, value):
    _, options, _ = checker
    problem = precheck.check_group_choices([f"{key}={value}"], options)
    assert problem is None or "\n" not in problem


def test_known_good_command_lines_pass_the_check(checker):
    searchpath, options, registry = checker
    assert precheck.precheck(["+scenario=bert_fp32", "backend=onnxruntime"], searchpath, options, registry) == (None, 1)
    assert precheck.precheck(["-m", "+scenario=bert_fp32", "backend=onnxruntime,pytorch", "scenario.batch_size=1,8"], searchpath, options, registry) == (
        None,
        4,
    )
    assert precheck.precheck(["-m", "backend=glob(onnx*)"], searchpath, options, registry)[0] is None
    assert precheck.precheck(["--cfg", "job"], searchpath, options, registry) == (None, None)
    assert precheck.precheck(["-m", "scenario.batch_size=range(1,1000000000)"], searchpath, options, registry)[0].startswith("this sweep has 999,999,999 jobs")
    problem, _ = precheck.precheck(["-m", "backend=glob(zzz*)"], searchpath, options, registry)
    assert problem.startswith("backend=glob(zzz*) matches no backend")
