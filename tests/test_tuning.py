"""Tuning (``+tune=...``): the objective read from records, failed and infeasible trials,
the search-space proposal, the precheck of an Optuna sweep, and a resumed study through
the real ``harness`` command (the test fault plugin's quick scenario: no model, seconds).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import records_in, run_cli

from harness import compose, precheck, tuning
from harness.errors import ConfigError

optuna = pytest.importorskip("optuna", reason="the tune extra (pip install 'harness[tune]') is not installed")

TESTS = Path(__file__).parent
QUICK = {"HARNESS_PLUGINS": "faultplugins.faulty", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def record(status="ok", throughput=100.0, p99=10.0, **extra):
    metrics = {"throughput": {"samples_per_s": throughput}, "latency_ms": {"p99": p99}}
    return {"status": status, "reason": "boom" if status != "ok" else "", "metrics": metrics, **extra}


def opts(**kwargs):
    return tuning.options({"study": "s", **kwargs})


# --- the objective mapping ------------------------------------------------------------------------


def test_objective_is_read_from_the_record_path_the_name_maps_to():
    assert tuning.OBJECTIVES["throughput"].path == "metrics.throughput.samples_per_s"
    verdict = tuning.evaluate(record(throughput=250.5), opts())
    assert (verdict.status, verdict.value, verdict.returned) == ("ok", 250.5, 250.5)


def test_a_dotted_record_path_is_an_objective_too():
    verdict = tuning.evaluate(record(p99=7.0), opts(objective="metrics.latency_ms.p99", direction="minimize"))
    assert verdict.returned == 7.0


def test_p99_above_the_bound_is_infeasible_and_returns_the_penalty():
    verdict = tuning.evaluate(record(throughput=900.0, p99=12.0), opts(max_p99_ms=10.0))
    assert verdict.status == "infeasible" and verdict.value == 900.0 and verdict.returned == 0.0
    assert "p99 12.000 ms > tune.max_p99_ms 10 ms" in verdict.reason
    assert tuning.evaluate(record(p99=10.0), opts(max_p99_ms=10.0)).status == "ok"  # the bound itself is allowed


@pytest.mark.parametrize("rec", [record(status="failed"), record(status="timeout"), None, {"status": "ok", "metrics": {}}, record(throughput=float("nan"))])
def test_failed_runs_return_the_penalty_never_an_exception(rec):
    verdict = tuning.evaluate(rec, opts())
    assert verdict.status == "failed" and verdict.returned == 0.0 and verdict.reason


def test_penalty_follows_the_direction_unless_set():
    assert opts(objective="p99", direction="minimize").worst == 1e9
    assert opts(penalty=-5).worst == -5.0


def test_training_that_never_reaches_the_target_is_infeasible():
    tune = opts(objective="time_to_target", direction="minimize")
    never = {"status": "ok", "metrics": {"training": {"time_to_target_s": None}}}
    assert tuning.evaluate(never, tune).status == "infeasible"
    reached = {"status": "ok", "metrics": {"training": {"time_to_target_s": 42.0}}}
    assert tuning.evaluate(reached, tune).returned == 42.0


def test_a_named_objective_refuses_the_wrong_direction():
    with pytest.raises(ConfigError, match="direction"):
        opts(objective="throughput", direction="minimize")


# --- trials read back from records ------------------------------------------------------------------


def trial_record(n, status="ok", throughput=100.0, p99=1.0, threads=1, max_p99=None):
    tune = {"study": "s1", "params": {"backend.threads": "choice(1,2)"}, "max_p99_ms": max_p99}
    return record(
        status,
        throughput,
        p99,
        created=f"2026-01-01T00:00:0{n}",
        run_id=f"r{n}",
        backend={"name": "pytorch"},
        config={"tune": tune, "backend": {"name": "pytorch", "threads": threads}},
    )


def test_trials_table_marks_each_status_and_the_best_feasible_trial():
    recs = [
        trial_record(1, throughput=300.0, threads=2),
        trial_record(0, status="failed"),
        trial_record(2, throughput=900.0, p99=50.0, max_p99=10.0),
        trial_record(3, throughput=200.0),
        {"status": "ok", "config": {}},
    ]  # not a trial
    frame = tuning.trials(recs)["s1"]
    assert list(frame["status"]) == ["failed", "ok", "infeasible", "ok"]  # in run order
    assert frame.attrs["best"] == 1 and frame.attrs["params"] == ["backend.threads"]
    assert tuning.best_overrides(frame) == ["backend.threads=2"]


def test_no_feasible_trial_means_no_best():
    frame = tuning.trials([trial_record(0, status="failed")])["s1"]
    assert frame.attrs["best"] is None and tuning.best_overrides(frame) == []


def test_importance_ranks_the_parameter_that_moves_the_objective():
    recs = [trial_record(i, throughput=100.0 * threads, threads=threads) for i, threads in enumerate([1, 2, 1, 2, 1, 2])]
    ranked = tuning.importance(tuning.trials(recs)["s1"])
    assert list(ranked) == ["backend.threads"]


# --- the search space --------------------------------------------------------------------------------


def test_suggest_proposes_the_generic_and_the_backends_keys_but_not_fixed_ones():
    cfg = OmegaConf.create(
        {
            "backend": {"name": "onnxruntime"},
            "tune": {
                "study": "s",
                "params": {"scenario.batch_size": "choice(1,8)"},
                "space": {
                    "onnxruntime": {"backend.intra_op_threads": "choice(1,2)", "backend.execution_mode": "choice(sequential,parallel)"},
                    "openvino": {"backend.threads": "choice(1,2)"},
                },
            },
        }
    )
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("backend.execution_mode", "parallel")  # fixed on the command line
    tuning.suggest(cfg, trial)
    assert set(trial.params) == {"scenario.batch_size", "backend.intra_op_threads"}
    assert trial.params["scenario.batch_size"] in (1, 8)


def test_thread_counts_above_the_cores_are_not_searched(monkeypatch):
    assert tuning.within_cores((0, 1, 2, 4, 8, 16), 2) == (0, 1, 2)
    assert tuning.within_cores((8, 16), 2) == (8, 16)  # nothing left: as given (preflight clamps)
    assert "backend.intra_op_threads" in tuning.cores_bound_keys("onnxruntime")
    assert "backend.execution_mode" not in tuning.cores_bound_keys("onnxruntime")
    assert tuning.cores_bound_keys("no-such-backend") == set()
    monkeypatch.setattr(tuning, "usable_cores", lambda: 2)
    cfg = OmegaConf.create(
        {
            "backend": {"name": "onnxruntime"},
            "tune": {"study": "s", "params": {}, "space": {"onnxruntime": {"backend.intra_op_threads": "choice(0,1,2,4,8,16)"}}},
        }
    )
    study = optuna.create_study()
    for _ in range(12):
        trial = study.ask()
        tuning.suggest(cfg, trial)
        assert trial.params["backend.intra_op_threads"] in (0, 1, 2)
        study.tell(trial, 1.0)


def test_presets_compose_with_the_optuna_sweeper_and_a_stable_study_name():
    with compose.hydra_context():
        from hydra import compose as hydra_compose

        for preset, scenario in (("inference", "bert_fp32"), ("training", "bert_train")):
            cfg = hydra_compose(config_name="config", overrides=[f"+tune={preset}", f"scenario={scenario}", "model=bert_tiny"], return_hydra_config=True)
            assert "Optuna" in cfg.hydra.sweeper._target_
            assert cfg.hydra.sweeper.study_name == f"{preset}-{scenario}-bert_tiny-onnxruntime"
            assert cfg.hydra.sweeper.custom_search_space == "harness.tuning.suggest"
            tune = tuning.options(cfg.tune)
            assert tune.params
    training = tuning.options(cfg.tune)
    assert set(training.params) >= {"scenario.optimizer", "scenario.lr", "scenario.weight_decay", "scenario.warmup_ratio", "scenario.dropout"}


# --- the precheck beside Optuna's search-space syntax -------------------------------------------------


def test_fixed_part_keeps_fixed_overrides_and_leaves_distributions_to_the_sweeper():
    job = precheck.fixed_part(
        ["backend=onnxruntime", "scenario.lr=interval(1e-5,1e-2)", "scenario.batch_size=choice(4,8)", "backend.intra_op_threads=range(1,3)"]
    )
    assert job == ["backend=onnxruntime", "scenario.batch_size=4", "backend.intra_op_threads=1"]


def test_precheck_validates_the_fixed_part_of_a_tuning_sweep_without_expanding_it(plugins):
    args = ["-m", "+tune=inference", "+scenario=bert_fp32", "model=bert_tiny", "scenario.seq_len=tag(log,interval(16,64))", "hydra.sweeper.n_trials=3"]
    checked = precheck.check(args, [], compose.group_options([]), plugins.registry)
    assert checked.problem is None and checked.count is None
    bad = precheck.check([*args, "scenario.batch_size=0"], [], compose.group_options([]), plugins.registry)
    assert bad.problem and "batch_size" in bad.problem


def test_a_tuning_preset_without_multirun_is_one_line_naming_the_fix(plugins):
    checked = precheck.check(["+tune=inference", "model=bert_tiny"], [], compose.group_options([]), plugins.registry)
    assert checked.problem and "needs Hydra's multirun" in checked.problem and "harness -m +tune=inference" in checked.problem


@pytest.fixture
def plugins():
    from harness.plugins import get_plugins

    return get_plugins()


# --- the real command: a study that resumes, and failures that do not stop it ----------------------


def tune_cli(tmp_path, results, *args):
    return run_cli(
        "-m",
        "+tune=inference",
        "+scenario=quick",
        "backend=numpy",
        f"results_dir={results}",
        "launcher.host_lock=false",
        "~tune.params",
        *args,
        cwd=tmp_path,
        env=QUICK,
    )


def study_trials(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT studies.study_name, trials.state FROM trials JOIN studies USING (study_id)").fetchall()


@pytest.mark.slow
def test_study_resumes_and_failed_or_infeasible_trials_are_recorded_not_fatal(tmp_path):
    results = tmp_path / "results"
    first = tune_cli(tmp_path, results, "hydra.sweeper.n_trials=2", "scenario.size=choice(16,32)")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "best: trial" in first.stdout and "throughput" in first.stdout and "Traceback" not in first.stderr
    assert len(records_in(results)) == 2
    # The same command again continues the study: trials 3 and 4, one failing, one over the p99 bound.
    failing = tune_cli(tmp_path, results, "hydra.sweeper.n_trials=1", "scenario.size=choice(16,32)", "backend.fault=choice(raise)")
    assert failing.returncode == 1, failing.stderr[-3000:]  # a sweep with a failed job says so, as any sweep
    assert "Traceback" not in failing.stderr and "tuning study" in failing.stdout
    assert "-> failed" in failing.stderr and "Optuna receives the penalty 0" in failing.stderr
    slow = tune_cli(tmp_path, results, "hydra.sweeper.n_trials=1", "scenario.size=choice(16,32)", "tune.max_p99_ms=1e-9")
    assert slow.returncode == 0, slow.stderr[-3000:]
    assert "-> infeasible" in slow.stderr
    recs = records_in(results)
    assert len(recs) == 4
    states = study_trials(results / tuning.STORAGE_FILE)
    assert {name for name, _ in states} == {"inference-quick-bert_small-numpy"}
    assert len(states) == 4 and all(state == "COMPLETE" for _, state in states)  # penalties, not crashed trials
    frame = next(iter(tuning.trials(recs).values()))
    assert sorted(frame["status"]) == ["failed", "infeasible", "ok", "ok"]
    assert "4 trials" in slow.stdout
    report = run_cli(str(results), "--out", str(tmp_path / "report"), command="harness-report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Tuning: inference-quick-bert\\_small-numpy" in text and "infeasible" in text and "failed" in text


# --- the report's tuning section ------------------------------------------------------------------


def test_report_shows_each_study_with_failed_and_infeasible_trials_and_its_figures(tmp_path):
    from test_results import make_record

    from harness import records, results
    from harness.report import build, html_page, markdown

    trials = [("ok", 100.0, 5.0, 1), ("failed", None, 5.0, 2), ("ok", 900.0, 50.0, 4), ("ok", 300.0, 5.0, 2), ("ok", 150.0, 6.0, 1)]
    for n, (status, throughput, p99, threads) in enumerate(trials):
        record = make_record(status=status, reason="RuntimeError: boom" if status != "ok" else "", throughput=throughput, p99=p99)
        record["created"] = f"2026-01-01T00:00:0{n}+00:00"
        record["config"]["backend"]["threads"] = threads
        record["config"]["tune"] = {"study": "s1", "params": {"backend.threads": "choice(1,2,4)"}, "max_p99_ms": 10.0}
        records.write(record, tmp_path)
    report = build.build(results.load(tmp_path))
    [study] = report.tuning
    assert list(study.table["status"]) == ["ok", "failed", "infeasible", "ok (best)", "ok"]
    assert "p99 50.000 ms > tune.max_p99_ms 10 ms" in study.table["reason"].tolist()
    assert "RuntimeError: boom" in study.table["reason"].iloc[1]
    assert study.best.startswith("best: trial 3, throughput 300") and "backend.threads=2" in study.best
    assert "3 ok, 1 infeasible, 1 failed" in study.headline
    assert [figure.name.split("_")[0] for figure in study.figures] == ["tuning", "importance"]
    text = markdown.render(report)
    assert "## Tuning: s1" in text and "infeasible" in text and "plots/tuning_s1.png" in text
    assert "Tuning: s1" in html_page.render(report)


def test_compare_tuned_judges_the_best_trial_against_the_defaults_run(tmp_path, capsys):
    from test_results import make_record

    from harness import compare, records

    records.write(make_record(throughput=100.0, p50=10.0, p99=12.0), tmp_path / "defaults")  # threads=4, batch 1
    for n, (throughput, threads) in enumerate([(150.0, 1), (400.0, 2), (90.0, 8)]):
        record = make_record(throughput=throughput, p50=10.0 * 100.0 / throughput, p99=12.0)
        record["created"] = f"2026-01-01T00:00:0{n}+00:00"
        record["config"]["backend"]["threads"] = threads
        record["config"]["tune"] = {"study": "s1", "params": {"backend.threads": "choice(1,2,8)"}}
        records.write(record, tmp_path / "tuned")
    assert compare.main([str(tmp_path / "defaults"), str(tmp_path / "tuned"), "--tuned", "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert (row["verdict"], row["baseline"], row["candidate"]) == ("better", 100.0, 400.0)
    # Without --tuned the trials are other configurations: nothing matches.
    assert compare.main([str(tmp_path / "defaults"), str(tmp_path / "tuned"), "--format", "json"]) == 0
    verdicts = {r["verdict"] for r in json.loads(capsys.readouterr().out)["rows"]}
    assert verdicts == {"only in baseline", "only in candidate"}
