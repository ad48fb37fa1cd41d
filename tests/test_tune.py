"""The tune stage on digits, in this process: MLflow per trial, outputs, budget, failures,
and the guards on a saved search. Kill/resume and parallel workers are in
test_tune_processes.py (slow)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import download, preprocess
from pipeline.errors import SearchFailedError, TuneStateError
from pipeline.tune import main as tune_main
from tests.tune_helpers import (
    TINY_SPACE,
    copy_processed,
    mlflow_client,
    parent_and_trials,
    read_best,
    read_leaderboard,
    saved_trials,
    tune_params,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, monkeypatch_module):
    """Download and preprocess digits once; tests copy data/processed/."""
    root = tmp_path_factory.mktemp("digits")
    monkeypatch_module.chdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": "digits"}}))
    assert download.main([]) == 0
    assert preprocess.main([]) == 0
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture
def tuned(digits, project):
    """A project with digits prepared; ``tuned.run(**tune)`` runs the stage in-process."""
    copy_processed(digits, project.path)

    class Tuned:
        root = project.path

        @staticmethod
        def run(**tune):
            tune_params(project.path, **tune)
            return tune_main(["--params", "params.yaml"])

    return Tuned


@pytest.mark.integration
def test_search_records_every_trial_in_mlflow_and_writes_the_leaderboard(tuned):
    assert tuned.run(max_trials=3, max_epochs=2) == 0
    client = mlflow_client(tuned.root)
    parents, trials = parent_and_trials(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["tune.algorithm"] == "random"
    assert len(parent.data.params["search_space_sha256"]) == 64
    assert parent.data.tags["data.dataset"] == "digits"
    assert parent.data.tags["git_commit"]
    assert len(trials) == 3
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        family = run.data.params["family"]
        # Only the trial's own family's hyperparameters are params.
        own = {k.split("/")[0] for k in run.data.params if "/" in k}
        assert own == {family}
        assert {"optimizer", "learning_rate", "dropout"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [0, 1]  # one point per epoch
        for metric in ("loss", "accuracy", "val_loss", "learning_rate"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == 2
        assert run.data.metrics["best_val_accuracy"] == max(m.value for m in history)
        assert run.data.metrics["params"] > 0 and run.data.metrics["wall_time_s"] > 0

    board = read_leaderboard(tuned.root)
    assert sorted(r["trial_id"] for r in board) == ["0", "1", "2"]
    by_run = {r.info.run_id: r for r in trials}
    for row in board:
        run = by_run[row["mlflow_run_id"]]
        assert row["trial_id"] == run.data.tags["trial_id"]
        assert row["family"] == run.data.params["family"]
        assert int(row["params"]) == run.data.metrics["params"]
        assert row["status"] == "COMPLETED" and row["epochs"] == "2"
        assert float(row["val_accuracy"]) == pytest.approx(run.data.metrics["best_val_accuracy"])
    scores = [float(r["val_accuracy"]) for r in board]
    assert scores == sorted(scores, reverse=True)

    best = read_best(tuned.root)
    assert best["trial_id"] == board[0]["trial_id"]
    assert best["val_accuracy"] == pytest.approx(scores[0])
    assert best["hyperparameters"]["family"] == best["family"]
    assert best["num_classes"] == 10 and best["input_shape"] == [8, 8, 1]
    assert best["mlflow_parent_run_id"] == parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")}
    assert artifacts == {
        "tuning/leaderboard.csv",
        "tuning/best_hparams.json",
        "tuning/budget.json",
    }
    # Epoch times per trial: what the train stage sizes the final training from.
    for row in board:
        run = by_run[row["mlflow_run_id"]]
        assert 0 < float(row["epoch_seconds"]) <= float(row["seconds"])
        assert float(row["epoch_seconds"]) == pytest.approx(
            run.data.metrics["epoch_seconds"], abs=1e-3
        )
        assert float(row["first_epoch_seconds"]) > 0
    assert best["train_samples"] == 1293
    assert best["epoch_seconds"] == pytest.approx(float(board[0]["epoch_seconds"]), abs=1e-3)
    spent = json.loads((tuned.root / "reports" / "tuning" / "budget.json").read_text())
    assert spent["mode"] == "time" and spent["minutes"] == 15.0
    assert spent["search_deadline"] - spent["started_at"] == pytest.approx(7 * 60)
    assert 0 < spent["search_seconds"] < 7 * 60
    assert parent.data.params["budget.search_share"] == "0.5"
    assert client.get_run(parent.info.run_id).data.metrics["budget_search_seconds"] > 0


@pytest.mark.integration
def test_rerun_of_a_finished_search_reattaches_and_adds_nothing(tuned, capsys):
    assert tuned.run(max_trials=2) == 0
    assert tuned.run(max_trials=2) == 0
    assert "resuming the saved search" in capsys.readouterr().err
    parents, trials = parent_and_trials(mlflow_client(tuned.root))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 2


@pytest.mark.integration
def test_raising_max_trials_extends_the_same_search(tuned):
    assert tuned.run(max_trials=1) == 0
    assert tuned.run(max_trials=3) == 0
    parents, trials = parent_and_trials(mlflow_client(tuned.root))
    assert len(parents) == 1
    assert sorted(r.data.tags["trial_id"] for r in trials) == ["0", "1", "2"]


@pytest.mark.integration
def test_models_over_max_params_fail_and_end_the_stage_after_the_limit(tuned, capsys):
    with pytest.raises(SearchFailedError, match="consecutive failures") as err:
        tuned.run(max_trials=5, max_params=10, max_consecutive_failed_trials=2)
    assert "max_params=10" in str(err.value)
    assert "\n" not in str(err.value)
    client = mlflow_client(tuned.root)
    parents, trials = parent_and_trials(client)
    assert parents[0].info.status == "FAILED"
    assert len(trials) == 2 and all(r.info.status == "FAILED" for r in trials)
    for run in trials:
        text = client.download_artifacts(run.info.run_id, "traceback.txt")
        assert "more than max_params=10" in open(text).read()
        assert run.data.tags["trial_status"] == "FAILED"
    board = read_leaderboard(tuned.root)
    assert [r["status"] for r in board] == ["FAILED", "FAILED"]
    assert "FAILED: FailedTrialError" in capsys.readouterr().err


@pytest.mark.integration
def test_nan_loss_marks_the_trial_invalid_and_it_is_retried(tuned):
    space = json.loads(json.dumps(TINY_SPACE))
    space["families"] = {"mlp": TINY_SPACE["families"]["mlp"]}
    space["optimizer"]["name"] = {"type": "choice", "values": ["sgd"], "default": "sgd"}
    space["optimizer"]["learning_rate"] = {"type": "choice", "values": [1.0e6], "default": 1.0e6}
    with pytest.raises(SearchFailedError, match="no trial completed"):
        tuned.run(space=space, max_trials=1, max_retries_per_trial=1)
    _, trials = parent_and_trials(mlflow_client(tuned.root))
    # One trial, run twice: the first attempt INVALID (to be retried), the retry FAILED.
    assert len(trials) == 2
    assert {r.data.tags["trial_id"] for r in trials} == {"0"}
    assert all(r.info.status == "FAILED" for r in trials)
    trials.sort(key=lambda r: r.info.start_time)
    assert [r.data.tags["trial_status"] for r in trials] == ["INVALID", "FAILED"]
    assert read_leaderboard(tuned.root)[0]["status"] == "FAILED"


@pytest.mark.integration
def test_a_tiny_time_budget_stops_early_and_still_writes_outputs(tuned, capsys):
    tiny = {"minutes": 0.0002, "reserve_minutes": 0, "search_share": 0.5}
    assert tuned.run(max_trials=10, max_epochs=5, budget=tiny) == 0
    client = mlflow_client(tuned.root)
    _, trials = parent_and_trials(client)
    # No final training fits: the first two trials are skipped after a few batches, the
    # third runs anyway and stops at the end of its first epoch; no other starts.
    trials.sort(key=lambda r: int(r.data.tags["trial_id"]))
    assert [r.data.tags["trial_status"] for r in trials] == ["SKIPPED", "SKIPPED", "COMPLETED"]
    ran = trials[-1]
    assert ran.info.status == "FINISHED"
    assert ran.data.tags["stopped_by_time_budget"] == "true"
    assert len(client.get_metric_history(ran.info.run_id, "val_accuracy")) == 1
    assert len(read_leaderboard(tuned.root)) == 3
    assert read_best(tuned.root)["epochs"] == 1
    assert "time budget spent" in capsys.readouterr().err


@pytest.mark.integration
def test_a_search_that_stops_improving_ends_and_leaves_its_time_to_the_final_training(
    tuned, capsys
):
    assert tuned.run(max_trials=30, patience_trials=2) == 0  # time mode, 15 minutes
    rows = sorted(read_leaderboard(tuned.root), key=lambda r: int(r["trial_id"]))
    scores = [float(r["val_accuracy"]) for r in rows]
    best_at = scores.index(max(scores))
    # Ended two trials after the best: neither beat it, and no third trial started.
    assert len(rows) == best_at + 3 < 30
    assert "no new best in the last 2 trials, tune.patience_trials" in capsys.readouterr().err
    record = json.loads((tuned.root / "reports/tuning/budget.json").read_text())
    assert record["search_stop"].startswith("no new best in the last 2 trials")
    assert record["search_seconds"] < record["planned_search_seconds"]


@pytest.mark.integration
def test_best_hparams_lists_the_next_best_configurations_for_the_final_ensemble(tuned):
    assert tuned.run(max_trials=3) == 0
    best = read_best(tuned.root)
    scored = sorted(
        (float(r["val_accuracy"]), r["trial_id"])
        for r in read_leaderboard(tuned.root)
        if r["val_accuracy"]
    )
    runners_up = best["runners_up"]
    # The other two trials (random search: distinct configurations), best first; each
    # trained as many epochs as the best, so measured against its score.
    assert [r["trial_id"] for r in runners_up] == [t for _, t in reversed(scored[:-1])]
    for record in runners_up:
        assert record["hyperparameters"] != best["hyperparameters"]
        assert record["epoch_seconds"] > 0 and record["train_samples"] == best["train_samples"]
        below = best["val_accuracy"] - record["val_accuracy"]
        assert record["below_best"] == pytest.approx(below) and below >= 0


def test_runners_up_are_measured_against_the_best_at_their_own_trial_epochs():
    import keras_tuner
    from keras_tuner.engine.trial import Trial, TrialStatus

    from pipeline.config import TuneParams
    from pipeline.tuning import outputs
    from pipeline.tuning.oracles import make_oracle

    oracle = make_oracle(TuneParams(algorithm="hyperband"), deadline=None)

    def end(trial_id, family, score, epochs):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("family", family)
        hp.Fixed("tuner/epochs", epochs)
        trial = Trial(hp, trial_id=trial_id, status=TrialStatus.COMPLETED)
        trial.score = score
        # Its own epochs: a promotion continues its trial's model for the rest only.
        trial.metrics.update("epochs", 2 if trial_id == "02" else epochs)
        oracle.trials[trial_id] = trial

    end("00", "simple_cnn", 0.874, epochs=2)
    end("01", "vgg", 0.870, epochs=2)  # 0.004 below the CNN's 2-epoch score
    end("02", "simple_cnn", 0.892, epochs=4)  # the CNN's promotion (2 more epochs): the best
    end("03", "resnet", 0.875, epochs=4)  # scores higher than vgg, but 0.017 below at 4
    best = outputs.best_hparams(oracle, {}, {})
    assert best["trial_id"] == "02"
    gaps = [(r["trial_id"], round(r["below_best"], 3)) for r in best["runners_up"]]
    assert gaps == [("01", 0.004), ("03", 0.017)]


def test_a_promotion_of_the_best_configuration_does_not_restart_the_patience_count():
    import time

    import keras_tuner
    from keras_tuner.engine.trial import Trial, TrialStatus

    from pipeline.config import TuneParams
    from pipeline.tuning.oracles import make_oracle

    oracle = make_oracle(
        TuneParams(algorithm="hyperband", patience_trials=3), deadline=time.time() + 600
    )

    def end(trial_id, rate, score, epochs=2):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("learning_rate", rate)
        hp.Fixed("tuner/epochs", epochs)
        trial = Trial(hp, trial_id=trial_id, status=TrialStatus.COMPLETED)
        trial.score = score
        oracle.trials[trial_id] = trial
        oracle.end_order.append(trial_id)

    end("00", 0.01, 0.80)  # the best configuration, first tried
    end("01", 0.02, 0.70)
    end("02", 0.01, 0.85, epochs=4)  # its promotion: a higher best, the same values
    assert not oracle.stalled()
    end("03", 0.03, 0.75)
    assert oracle.stalled()  # 3 trials since 00: the promotion found nothing new
    # A new configuration taking the lead starts the count again.
    end("04", 0.04, 0.90)
    end("05", 0.05, 0.60)
    assert not oracle.stalled()


@pytest.mark.integration
def test_a_stalled_search_resumes_with_more_patience_and_goes_on(tuned, capsys):
    assert tuned.run(max_trials=30, patience_trials=1) == 0
    first = len(read_leaderboard(tuned.root))
    assert "no new best in the last 1 trials" in capsys.readouterr().err
    # patience_trials limits the search without changing any trial: the same search resumes.
    assert tuned.run(max_trials=first + 2, patience_trials=None) == 0
    assert len(read_leaderboard(tuned.root)) == first + 2


@pytest.mark.integration
def test_in_epochs_mode_the_search_runs_all_its_trials_whatever_the_patience(tuned):
    assert tuned.run(max_trials=3, patience_trials=1, budget={"mode": "epochs"}) == 0
    assert len(read_leaderboard(tuned.root)) == 3
    record = json.loads((tuned.root / "reports/tuning/budget.json").read_text())
    assert record["search_stop"] == "all trials done"


@pytest.mark.integration
def test_changed_settings_refuse_to_resume_until_resume_is_false(tuned):
    assert tuned.run(max_trials=1) == 0
    with pytest.raises(TuneStateError, match=r"tune.algorithm 'random' -> 'bayesian'.*resume"):
        tuned.run(max_trials=1, algorithm="bayesian")
    space = json.loads(json.dumps(TINY_SPACE))
    space["common"]["dropout"]["max"] = 0.2
    with pytest.raises(TuneStateError, match="search-space file changed"):
        tuned.run(space=space, max_trials=1)
    # resume: false starts over: a new parent run, the old one kept in MLflow.
    assert tuned.run(space=space, max_trials=1, resume=False) == 0
    parents, _ = parent_and_trials(mlflow_client(tuned.root))
    assert len(parents) == 2


@pytest.mark.integration
def test_a_torn_state_file_is_an_error_and_nothing_is_wiped(tuned):
    assert tuned.run(max_trials=1) == 0
    oracle = tuned.root / "models" / "tuner" / "search" / "oracle.json"
    oracle.write_text(oracle.read_text()[:40])
    with pytest.raises(TuneStateError, match=r"oracle.json: not valid JSON.*resume: false"):
        tuned.run(max_trials=1)
    assert (tuned.root / "models" / "tuner" / "search" / "trial_0" / "trial.json").exists()
    oracle.write_text("")
    with pytest.raises(TuneStateError, match="oracle.json: empty"):
        tuned.run(max_trials=1)


@pytest.mark.integration
def test_a_trial_created_just_before_a_kill_is_trained_when_the_search_resumes(tuned):
    """A kill between Keras Tuner writing a new trial's trial.json and oracle.json leaves a
    RUNNING trial that oracle.json does not list; the resumed search must train it, not
    count it against max_trials and skip it."""
    assert tuned.run(max_trials=1) == 0
    search = tuned.root / "models" / "tuner" / "search"
    state = json.loads((search / "trial_0" / "trial.json").read_text())
    state.update(trial_id="1", status="RUNNING", score=None, best_step=0, message=None)
    state["metrics"] = {"metrics": {}}
    (search / "trial_1").mkdir()
    (search / "trial_1" / "trial.json").write_text(json.dumps(state))

    assert tuned.run(max_trials=2) == 0
    trials = saved_trials(tuned.root)
    assert sorted(trials) == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    _, runs = parent_and_trials(mlflow_client(tuned.root))
    assert sorted(r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED") == [
        "0",
        "1",
    ]
    assert len(read_leaderboard(tuned.root)) == 2


@pytest.mark.integration
def test_orphaned_running_runs_of_dead_processes_are_marked_killed(tuned):
    assert tuned.run(max_trials=1) == 0
    client = mlflow_client(tuned.root)
    exp = client.get_experiment_by_name("digits").experiment_id
    import socket

    dead = client.create_run(
        exp, tags={"pipeline.host": socket.gethostname(), "pipeline.pid": "999999"}
    )
    other_host = client.create_run(exp, tags={"pipeline.host": "elsewhere", "pipeline.pid": "1"})
    assert tuned.run(max_trials=1) == 0
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert client.get_run(other_host.info.run_id).info.status == "RUNNING"


@pytest.mark.integration
def test_experiment_name_and_tracking_uri_come_from_params_or_the_environment(
    tuned, monkeypatch, tmp_path
):
    env_db = tmp_path / "env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_db}")
    mlflow_params = {"experiment_name": "my-search", "tracking_uri": "sqlite:///other.db"}
    tune_params(tuned.root, mlflow=mlflow_params, max_trials=1)
    assert tune_main(["--params", "params.yaml"]) == 0
    assert env_db.exists() and not (tuned.root / "other.db").exists()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{env_db}")
    assert client.get_experiment_by_name("my-search") is not None


@pytest.mark.parametrize("algorithm", ["hyperband", "bayesian", "grid"])
@pytest.mark.integration
def test_every_algorithm_runs_a_search(tuned, algorithm):
    # hyperband with max_epochs 2, factor 2: a 1-epoch round, then the best trial continues.
    extra = {"hyperband_factor": 2} if algorithm == "hyperband" else {}
    assert tuned.run(algorithm=algorithm, max_trials=3, max_epochs=2, **extra) == 0
    board = read_leaderboard(tuned.root)
    assert len(board) == 3 and all(r["status"] == "COMPLETED" for r in board)
    _, trials = parent_and_trials(mlflow_client(tuned.root))
    assert len(trials) == 3
    if algorithm == "hyperband":
        # Continued trials say so: Keras Tuner's bookkeeping is a tag, not a param.
        assert any("tuner/trial_id" in r.data.tags for r in trials)
        assert not any(k.startswith("tuner/") for r in trials for k in r.data.params)


@pytest.mark.integration
def test_mixed_precision_and_jit_switches_reach_every_trial(tuned):
    assert tuned.run(max_trials=2, mixed_precision=True, jit_compile=False) == 0
    _, trials = parent_and_trials(mlflow_client(tuned.root))
    assert [r.data.tags["dtype_policy"] for r in trials] == ["mixed_float16"] * 2
    assert all(r.info.status == "FINISHED" for r in trials)


@pytest.mark.integration
def test_changed_data_starts_a_fresh_search(tuned, capsys):
    # New images (a retrain): the saved trials were scored on other data.
    assert tuned.run(max_trials=2) == 0
    meta = tuned.root / "data" / "processed" / "meta.json"
    data = json.loads(meta.read_text())
    data["preprocess"]["seed"] = 7
    meta.write_text(json.dumps(data))
    capsys.readouterr()
    assert tuned.run(max_trials=1) == 0
    assert "the data changed since the search saved in models/tuner/" in capsys.readouterr().err
    assert len(read_leaderboard(tuned.root)) == 1  # only the new search's trial
    parents, _ = parent_and_trials(mlflow_client(tuned.root))
    assert len(parents) == 2  # a new parent run, not the old one re-attached


@pytest.mark.integration
def test_a_budget_ends_a_search_midway_and_the_stage_succeeds(tuned):
    # All of it for the search (search_share 1): no final training, so nothing is skipped
    # as too slow for one.
    budget = {"minutes": 0.2, "reserve_minutes": 0, "search_share": 1.0}
    assert tuned.run(max_trials=200, budget=budget) == 0
    board = read_leaderboard(tuned.root)
    assert 1 <= len(board) < 200
    assert all(r["status"] == "COMPLETED" for r in board)


@pytest.mark.integration
def test_executions_per_trial_train_each_trial_that_many_times(tuned):
    assert tuned.run(max_trials=1, executions_per_trial=2) == 0
    assert read_leaderboard(tuned.root)[0]["epochs"] == "2"  # 1 epoch x 2 executions


@pytest.mark.integration
def test_the_cli_exits_1_with_one_line_when_every_trial_fails(tuned):
    from tests.conftest import run_cli

    tune_params(tuned.root, max_trials=4, max_params=10, max_consecutive_failed_trials=2)
    result = run_cli("tune", cwd=tuned.root)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: search stopped: Number of consecutive failures")
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_local_worker_stops_when_its_chief_is_sigkilled(tmp_path):
    """The worker polls for its chief and SIGTERMs itself once the chief is gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    worker = (
        "import time\n"
        "from pipeline.tuning.distributed import exit_with_chief\n"
        "assert exit_with_chief(poll_s=0.05) is not None\n"
        "time.sleep(60)\n"
    )
    pid_file = tmp_path / "worker.pid"
    chief = (
        "import os, pathlib, subprocess, sys, time\n"
        "env = {**os.environ, 'PIPELINE_CHIEF_PID': str(os.getpid())}\n"
        f"proc = subprocess.Popen([sys.executable, '-c', {worker!r}], env=env)\n"
        f"pathlib.Path({str(pid_file)!r} + '.tmp').write_text(str(proc.pid))\n"
        f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", chief], env=env)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the chief did not start its worker"
            time.sleep(0.05)
        worker_pid = int(pid_file.read_text())
        time.sleep(1.0)  # the worker has imported pipeline and is watching
        assert _running(worker_pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while _running(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(worker_pid), "the worker outlived its SIGKILLed chief"


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.integration
def test_epochs_mode_runs_the_same_trials_with_the_same_scores_on_a_slower_machine(
    tuned, monkeypatch
):
    from pipeline.budget import SLOW_EPOCH_ENV

    def search(slow: str) -> list[tuple]:
        monkeypatch.setenv(SLOW_EPOCH_ENV, slow)
        epochs = {"mode": "epochs"}
        assert tuned.run(max_trials=2, max_epochs=2, resume=False, budget=epochs) == 0
        return sorted(
            (r["trial_id"], r["family"], r["learning_rate"], r["epochs"], r["val_accuracy"])
            for r in read_leaderboard(tuned.root)
        )

    fast = search("0")
    slow = search("0.5")  # every epoch half a second longer: no clock, so no difference
    assert slow == fast
    spent = json.loads((tuned.root / "reports" / "tuning" / "budget.json").read_text())
    assert spent["mode"] == "epochs" and "search_deadline" not in spent


def _with_seeds(*seeds: dict) -> dict:
    space = json.loads(json.dumps(TINY_SPACE))
    space["seeds"] = list(seeds)
    return space


@pytest.mark.integration
def test_the_seeds_are_tried_first_in_order_and_a_resume_does_not_repeat_them(tuned):
    cnn = {"family": "simple_cnn", "filters": 16, "dropout": 0.1, "optimizer": "sgd"}
    mlp = {"family": "mlp", "units": 64, "learning_rate": 5.0e-3}
    space = _with_seeds(cnn, mlp)
    assert tuned.run(space=space, max_trials=2) == 0
    trials = saved_trials(tuned.root)
    first = trials["0"]["hyperparameters"]["values"]
    second = trials["1"]["hyperparameters"]["values"]
    assert first["family"] == "simple_cnn" and first["simple_cnn/filters"] == 16
    assert first["dropout"] == 0.1 and first["optimizer"] == "sgd"
    # What a seed does not name takes the space's default.
    assert (
        first["simple_cnn/kernel_size"]
        == TINY_SPACE["families"]["simple_cnn"]["kernel_size"]["default"]
    )
    assert second["family"] == "mlp" and second["mlp/units"] == 64
    assert second["learning_rate"] == 5.0e-3
    # A resumed search with a higher max_trials explores; it does not run a seed again.
    assert tuned.run(space=space, max_trials=4) == 0
    trials = saved_trials(tuned.root)
    assert len(trials) == 4
    later = [trials[t]["hyperparameters"]["values"] for t in ("2", "3")]
    assert all(v != first and v != second for v in later)


@pytest.mark.integration
def test_a_small_split_gets_the_small_data_seeds_first_and_epochs_of_enough_steps(tuned, capsys):
    cnn = {"family": "simple_cnn", "filters": 16, "optimizer": "adam"}
    mlp = {"family": "mlp", "units": 64, "learning_rate": 5.0e-3}
    space = _with_seeds(cnn)
    space["small_data"] = {"max_images": 5000, "seeds": [mlp]}
    assert tuned.run(space=space, max_trials=2, min_epoch_steps=50) == 0
    trials = saved_trials(tuned.root)
    assert trials["0"]["hyperparameters"]["values"]["family"] == "mlp"  # small data: first
    assert trials["1"]["hyperparameters"]["values"]["family"] == "simple_cnn"
    log = capsys.readouterr().err
    # digits' 1293 training images in batches of 64: 21 steps a pass, so 3 passes an epoch.
    assert "a trial epoch is 3 passes over 1293 images per epoch (63 steps" in log
    assert "1 small-data seed(s) first (1293 training images" in log
    best = read_best(tuned.root)
    assert best["train_samples"] == 3 * 1293  # the budget scales epoch time per image seen
    assert best["epochs"] == 1

    # A larger split than max_images: the space's own seeds, one pass per epoch.
    space["small_data"]["max_images"] = 1000
    assert tuned.run(space=space, max_trials=1, min_epoch_steps=0, resume=False) == 0
    first = saved_trials(tuned.root)["0"]["hyperparameters"]["values"]
    assert first["family"] == "simple_cnn"
    assert read_best(tuned.root)["train_samples"] == 1293
    assert "a trial epoch is" not in capsys.readouterr().err


@pytest.mark.integration
def test_configurations_too_slow_for_the_final_training_are_skipped_not_failed(tuned, capsys):
    # 30 s of search, 10 s left for the final training after its finishing: no model can
    # train a million epochs there. The first two trials (seeds too slow for this machine)
    # stop after their first timed batches, the third runs whatever its cost (the search
    # needs one model), the fourth is skipped again, and the stage succeeds.
    budget = {"minutes": 1.0, "reserve_minutes": 0, "min_final_epochs": 1_000_000}
    assert (
        tuned.run(max_trials=4, max_epochs=2, budget=budget, max_consecutive_failed_trials=1) == 0
    )
    board = read_leaderboard(tuned.root)
    status = {int(r["trial_id"]): r["status"] for r in board}
    assert status == {0: "SKIPPED", 1: "SKIPPED", 2: "COMPLETED", 3: "SKIPPED"}
    client = mlflow_client(tuned.root)
    _, trials = parent_and_trials(client)
    skipped = [r for r in trials if r.data.tags["trial_status"] == "SKIPPED"]
    assert len(skipped) == 3 and all(r.info.status == "KILLED" for r in skipped)
    assert all("budget.min_final_epochs" in r.data.tags["skipped_reason"] for r in skipped)
    # Each stopped within a few batches of its first epoch: no epoch was logged.
    assert all(not client.get_metric_history(r.info.run_id, "val_accuracy") for r in skipped)
    err = capsys.readouterr().err
    assert err.count("skipped, too slow for the budget") == 3
    assert "1 trial(s) completed, 0 failed, 3 skipped as too slow for the budget" in err


@pytest.mark.integration
def test_hyperband_screens_on_fewer_images_and_promotions_use_them_all(tuned, monkeypatch, capsys):
    from pipeline.tuning import tuner as tuner_module

    monkeypatch.setattr(tuner_module, "MIN_SCREENING_IMAGES", 100)
    # max_epochs 3, factor 3: a 1-epoch round on a third of the images, then the best
    # configuration continues for 3 epochs on all of them.
    assert (
        tuned.run(
            algorithm="hyperband", max_trials=4, max_epochs=3, hyperband_factor=3,
            screen_on_subsets=True,
        ) == 0
    )  # fmt: skip
    total = json.loads((tuned.root / "data/processed/meta.json").read_text())["images"]["train"]
    samples = {}
    for trial_id, state in saved_trials(tuned.root).items():
        values = state["hyperparameters"]["values"]
        metric = state["metrics"]["metrics"]["train_samples"]["observations"][0]["value"]
        samples[trial_id] = (values["tuner/round"], int(metric[0]))
    assert {n for r, n in samples.values() if r == 0} == {math.ceil(total / 3)}
    assert {n for r, n in samples.values() if r == 1} == {total}
    assert f"({math.ceil(total / 3)} images)" in capsys.readouterr().err
    # The best trial's epoch time is per image: the final training scales it to its own.
    best = read_best(tuned.root)
    assert best["train_samples"] == samples[best["trial_id"]][1]
    assert 0 < best["val_seconds"] <= best["epoch_seconds"]

    # Off: every trial trains on all the images.
    shutil.rmtree(tuned.root / "models" / "tuner")
    assert tuned.run(
        algorithm="hyperband", max_trials=4, max_epochs=3, hyperband_factor=3,
        screen_on_subsets=False, resume=False,
    ) == 0  # fmt: skip
    for state in saved_trials(tuned.root).values():
        metric = state["metrics"]["metrics"]["train_samples"]["observations"][0]["value"]
        assert int(metric[0]) == total


def test_screening_images_divide_by_the_factor_per_round_left():
    from pipeline.tuning.tuner import MIN_SCREENING_IMAGES, screening_images

    assert screening_images({}, 3, 20000) == 20000  # random search: all
    assert screening_images({"tuner/bracket": 0, "tuner/round": 0}, 3, 20000) == 20000
    assert screening_images({"tuner/bracket": 1, "tuner/round": 0}, 3, 20000) == 6667
    assert screening_images({"tuner/bracket": 1, "tuner/round": 1}, 3, 20000) == 20000
    assert screening_images({"tuner/bracket": 3, "tuner/round": 0}, 3, 20000) == 2000
    assert screening_images({"tuner/bracket": 2, "tuner/round": 0}, 3, 1500) == 1500
    assert MIN_SCREENING_IMAGES == 2000


def test_a_saved_parent_run_not_in_the_store_starts_a_new_one_but_a_store_error_stops(capsys):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    from pipeline.errors import PipelineError
    from pipeline.tuning.session import reattach_parent

    class Store:
        def __init__(self, code):
            self.code = code

        def get_run(self, run_id):
            raise MlflowException(f"run {run_id}: {self.code}", error_code=self.code)

    saved = {"parent_run_id": "parent"}
    assert reattach_parent(Store(RESOURCE_DOES_NOT_EXIST), saved, "0") is None
    assert "is not in this MLflow store; starting a new one" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="reading run parent failed .INTERNAL_ERROR."):
        reattach_parent(Store(INTERNAL_ERROR), saved, "0")  # e.g. the server is unreachable
