"""The tune stage as separate processes: SIGKILL and SIGTERM then resume, and parallel
workers (chief + workers, an `mlflow server`, a worker that dies). Slow: each test
starts several Python processes that import TensorFlow."""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.net import free_port
from tests.conftest import ROOT, run_cli
from tests.tune_helpers import (
    all_runs,
    mlflow_client,
    parent_and_trials,
    read_leaderboard,
    saved_trials,
    tune_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": "digits"}}))
    for stage in ("download", "preprocess"):
        result = run_cli(stage, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def proj(digits, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(digits / "data" / "processed", root / "data" / "processed")
    return root


class Stage:
    """``python -m pipeline tune`` in the background, its stderr read line by line."""

    def __init__(self, root: Path, *args: str, env: dict | None = None):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "tune", *args],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self._queue.put(line)

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code

    @property
    def text(self) -> str:
        return "".join(self.lines)


# Slower trials (small batches, several epochs) so a signal lands inside one.
SLOW_TRIALS = {"max_epochs": 4, "batch_size": 8}


def _completed_ids(root: Path) -> set[str]:
    return {t for t, s in saved_trials(root).items() if s["status"] == "COMPLETED"}


def test_sigkill_then_rerun_resumes_without_losing_or_repeating_trials(proj):
    tune_params(proj, max_trials=4, **SLOW_TRIALS)
    first = Stage(proj)
    first.wait_for(r"^trial 1/4 ")
    done_before = _completed_ids(proj)
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    assert done_before and len(done_before) < 4

    second = run_cli("tune", cwd=proj, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resuming the saved search" in second.stderr
    assert "marked" in second.stderr and "KILLED" in second.stderr  # the orphans

    trials = saved_trials(proj)
    assert sorted(trials) == ["0", "1", "2", "3"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    client = mlflow_client(proj)
    parents, runs = parent_and_trials(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == ["0", "1", "2", "3"]  # each exactly once
    for trial_id in done_before:  # completed before the kill: kept, not trained again
        assert [r.data.tags["trial_id"] for r in runs].count(trial_id) == 1
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    assert len(read_leaderboard(proj)) == 4


def test_sigterm_ends_runs_killed_and_the_search_resumes(proj):
    tune_params(proj, max_trials=3, **SLOW_TRIALS)
    first = Stage(proj)
    first.wait_for(r"^trial 1/3 ")
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 130
    assert "interrupted" in first.text
    client = mlflow_client(proj)
    parents, runs = parent_and_trials(client)
    assert parents[0].info.status == "KILLED"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    interrupted = [r for r in runs if r.info.status == "KILLED"]
    assert all(r.data.tags["trial_status"] == "INTERRUPTED" for r in interrupted)

    second = run_cli("tune", cwd=proj, timeout=600)
    assert second.returncode == 0, second.stderr
    parents, runs = parent_and_trials(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = sorted(r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED")
    seen = [
        (r.data.tags.get("trial_id"), r.info.status, r.data.tags.get("trial_status")) for r in runs
    ]
    assert finished == ["0", "1", "2"], (
        f"{seen}\nFIRST:\n{first.text[-3000:]}\nSECOND:\n{second.stderr[-3000:]}"
    )


def _worker_pids() -> dict[str, int]:
    """Live `pipeline tune --worker` processes: tuner id -> pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker" not in cmdline or b"pipeline" not in cmdline:
            continue
        for item in environ:
            if item.startswith(b"KERASTUNER_TUNER_ID="):
                found[item.split(b"=", 1)[1].decode()] = int(proc.name)
    return found


def test_chief_and_two_workers_log_every_trial_under_one_parent_run(proj, mlflow_server):
    tune_params(proj, max_trials=4, max_epochs=2)
    before = set(_worker_pids().values())
    stage = Stage(proj, "--workers", "2", env={"MLFLOW_TRACKING_URI": mlflow_server.url})
    assert stage.finish(timeout=600) == 0, stage.text
    assert "chief serving the oracle" in stage.text
    assert re.search(r"^\[tuner0\] trial", stage.text, re.M)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    parents, runs = parent_and_trials(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["pipeline.pid"] for r in runs}) == 2  # both workers took trials
    assert len(read_leaderboard(proj)) == 4
    assert set(_worker_pids().values()) <= before  # every worker has exited


def test_a_worker_that_dies_does_not_hang_the_chief(proj):
    tune_params(proj, max_trials=4, **SLOW_TRIALS)
    stage = Stage(proj, "--workers", "2")
    # Right after tuner0 ends a trial it takes the next one: kill it then, mid-trial.
    stage.wait_for(r"^\[tuner0\] trial \d/4 ")
    time.sleep(1.5)  # it has asked the chief for its next trial and is training it
    os.kill(_worker_pids()["tuner0"], signal.SIGKILL)
    assert stage.finish(timeout=600) == 0, stage.text
    assert re.search(r"worker tuner0 exited with code -9; its trial \d is retried", stage.text)
    assert "started replacement worker tuner2" in stage.text
    assert sorted(_completed_ids(proj)) == ["0", "1", "2", "3"]
    client = mlflow_client(proj)
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


def test_a_chief_serves_workers_started_by_hand_as_on_other_hosts(proj):
    """The multi-host recipe: `--chief` on one host, `--worker` with KERASTUNER_* elsewhere."""
    tune_params(proj, max_trials=2)
    port = free_port()
    chief = Stage(proj, "--chief", "--port", str(port))
    chief.wait_for("chief serving the oracle")
    worker_env = {
        "KERASTUNER_TUNER_ID": "tuner-b",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
    }  # no PIPELINE_PARENT_RUN_ID: the worker finds the parent run in MLflow
    worker = run_cli("tune", "--worker", cwd=proj, env=worker_env, timeout=300)
    assert worker.returncode == 0, worker.stderr
    assert chief.finish(timeout=120) == 0, chief.text
    parents, runs = parent_and_trials(mlflow_client(proj))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["trial_id"] for r in runs) == ["0", "1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def _workers_of(chief_pid: int) -> list[int]:
    """Live worker processes started by the chief ``chief_pid`` (by their environment)."""
    marker = f"PIPELINE_CHIEF_PID={chief_pid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(proc.name))
    return found


def test_workers_stop_and_close_their_runs_when_the_chief_is_sigkilled(proj):
    tune_params(proj, max_trials=4, **SLOW_TRIALS)
    stage = Stage(proj, "--workers", "2")
    stage.wait_for(r"^\[tuner\d\] trial \d/4 ")  # the workers are taking trials
    workers = _workers_of(stage.proc.pid)
    assert len(workers) == 2
    stage.proc.send_signal(signal.SIGKILL)
    stage.finish()
    deadline = time.monotonic() + 60
    while _workers_of(stage.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers_of(stage.proc.pid) == [], "workers outlived their SIGKILLed chief"
    # They stopped by SIGTERM, as on Ctrl-C: each closed its running trial's run.
    _, runs = parent_and_trials(mlflow_client(proj))
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
