"""Parallel tuning through Keras Tuner's chief/worker mode.

The chief (``python -m pipeline tune --workers N``) holds the oracle and serves it over
gRPC; each worker is ``python -m pipeline tune --worker`` with Keras Tuner's variables
(``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) and asks
it for trials. Local workers are watched: one that dies has its trial put back in the
queue, so the chief never waits for it forever. A local worker also watches its chief
(``PIPELINE_CHIEF_PID``) and stops once the chief is gone, even killed by SIGKILL. Every
worker logs its trials under the chief's MLflow parent run (``PIPELINE_PARENT_RUN_ID``,
else found by its tags).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

from pipeline import runtime, tracking
from pipeline.config import Params
from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.net import free_port
from pipeline.search import load_search_space
from pipeline.tuning import session as sessions

PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
CHIEF_PID_ENV = "PIPELINE_CHIEF_PID"


def exit_with_chief(poll_s: float = 1.0) -> threading.Thread | None:
    """In a local worker: SIGTERM itself once the chief that started it is gone.

    The worker polls its parent pid: code run between fork and exec to ask the kernel
    for a death signal can deadlock a parent that runs threads (gRPC's). A chief that
    dies by SIGKILL leaves the worker reparented, and the next poll sees it. Workers
    started by hand (other hosts) have no ``PIPELINE_CHIEF_PID`` and are not watched.
    """
    chief = os.environ.get(CHIEF_PID_ENV)
    if not chief:
        return None
    chief_pid = int(chief)

    def watch() -> None:
        while os.getppid() == chief_pid:
            time.sleep(poll_s)
        # The CLI turns SIGTERM into KeyboardInterrupt: the running trial's run is closed.
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-chief", daemon=True)
    thread.start()
    return thread


class Chief:
    """Serves the oracle and runs ``workers`` local worker processes until the search ends.

    A local worker that dies has its trial retried (a retry counts against
    ``tune.max_retries_per_trial``) and is replaced, up to ``workers`` replacements.
    """

    def __init__(self, session, tuner, workers: int, host: str, port: int | None, params: str):
        self.session, self.tuner, self.oracle = session, tuner, tuner.oracle
        self.workers, self.host, self.params = workers, host, params
        self.port = port or free_port(host)
        self.procs: dict[str, subprocess.Popen] = {}
        self.replacements_left = workers
        self.server = None
        self.servicer = None
        self.gpus: list[str] = []

    def start(self) -> None:
        import grpc

        from pipeline.tuning import kt_compat

        self.oracle.verbose = 0  # our own one line per trial, not Keras Tuner's tables
        self.tuner.save()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max(4, self.workers)),
            options=[("grpc.so_reuseport", 0)],  # a second chief must not share the port
        )
        self.servicer = kt_compat.add_oracle_service(self.server, self.oracle)
        try:
            bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise PipelineError(f"cannot listen on {self.host}:{self.port}; pick another --port")
        self.server.start()
        log(f"tune: chief serving the oracle on {self.host}:{self.port}")
        self.gpus = runtime.gpu_ids()
        for i in range(self.workers):
            self._spawn(i)
        if self.workers:
            on = f" on GPUs {self.gpus}" if self.gpus else ""
            log(f"tune: started {self.workers} worker(s){on}")

    def _spawn(self, i: int) -> str:
        tuner_id = f"tuner{i}"
        env = {
            **os.environ,
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host,
            "KERASTUNER_ORACLE_PORT": str(self.port),
            PARENT_ENV: self.session.parent_run_id,
            CHIEF_PID_ENV: str(os.getpid()),
            "MLFLOW_TRACKING_URI": self.session.uri,
            "PIPELINE_LOG_PREFIX": f"[{tuner_id}] ",
        }
        if self.gpus:  # one GPU per worker, round robin when there are more workers
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[i % len(self.gpus)]
        cmd = [sys.executable, "-m", "pipeline", "tune", "--worker", "--params", self.params]
        self.procs[tuner_id] = subprocess.Popen(cmd, env=env)
        return tuner_id

    def _search_over(self) -> bool:
        from pipeline.tuning import kt_compat

        if not kt_compat.chief_may_exit(self.servicer, self.oracle):
            return False
        # A trial put back by a dead worker still needs running, unless nothing may start.
        oracle = self.oracle
        stopping = oracle.failure or oracle.budget_spent() or oracle.stall_stopped
        return not oracle.pending_retries() or bool(stopping)

    def wait(self) -> None:
        """Block until the search has ended and no worker holds a trial."""
        finished: set[str] = set()
        saved_at = time.monotonic()
        while True:
            time.sleep(0.5)
            if time.monotonic() - saved_at > 30:  # the budget spent, in case of a SIGKILL
                self.session.save_state()
                saved_at = time.monotonic()
            for tuner_id, proc in self.procs.items():
                if tuner_id in finished or proc.poll() is None:
                    continue
                finished.add(tuner_id)
                requeued = self.oracle.release_tuner(tuner_id)
                if proc.returncode != 0:
                    note = f"; its trial {requeued} is retried or failed" if requeued else ""
                    log(f"tune: worker {tuner_id} exited with code {proc.returncode}{note}")
                    # A killed worker could not close its trial's run.
                    tracking.mark_orphans_killed(self.session.client, self.session.experiment_id)
                    if self.replacements_left > 0 and not self._search_over():
                        self.replacements_left -= 1
                        log(f"tune: started replacement worker {self._spawn(len(self.procs))}")
                        break  # self.procs changed size
            if self._search_over():
                return
            if self.procs and all(p.poll() is not None for p in self.procs.values()):
                if self.oracle.failure or (self.oracle.stop_reason and self._search_over()):
                    return
                raise PipelineError(
                    f"all {len(self.procs)} workers exited before the search ended; "
                    "rerun the stage to resume it"
                )

    def stop(self) -> None:
        """Stop the workers (they close their MLflow runs) and the server."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.server is not None:
            self.server.stop(grace=1)


def worker_session(params: Params) -> sessions.Session:
    """A worker's view: the chief's MLflow parent run and deadline; no state files touched."""
    for var in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        if not os.environ.get(var):
            raise PipelineError(
                f"--worker needs {var} (and the other KERASTUNER_* variables) to reach the chief"
            )
    if "chief" in os.environ["KERASTUNER_TUNER_ID"]:
        raise PipelineError(
            "KERASTUNER_TUNER_ID must not contain 'chief' for a worker (Keras Tuner would "
            "make it a chief); use e.g. tuner-b"
        )
    space_file = Path(params.tune.search_space)
    space = load_search_space(space_file)
    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    client, exp_id = tracking.open_experiment(uri, sessions.experiment_name(params))
    parent = os.environ.get(PARENT_ENV) or _find_parent(client, exp_id)
    deadline_tag = client.get_run(parent).data.tags.get(sessions.DEADLINE_TAG, "none")
    return sessions.Session(
        params=params,
        space=space,
        space_file=space_file,
        fingerprint={},
        saved=None,
        uri=uri,
        client=client,
        experiment_id=exp_id,
        parent_run_id=parent,
        deadline=None if deadline_tag == "none" else float(deadline_tag),
    )


def _find_parent(client, exp_id: str) -> str:
    runs = client.search_runs(
        [exp_id],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{tracking.ROLE_TAG}` = "
            f"'{sessions.PARENT_ROLE}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise PipelineError(
            f"no running tune parent run in MLflow experiment {exp_id}; start the chief first "
            f"(or set {PARENT_ENV})"
        )
    return runs[0].info.run_id


def run_worker(params: Params) -> int:
    """Take trials from the chief until it says stop."""
    from pipeline.data.splits import load_splits

    exit_with_chief()
    session = worker_session(params)
    tune = params.tune
    splits = load_splits(max_train_samples=tune.max_train_samples, seed=tune.seed)
    balance, lr_scale = sessions.fit_to_data(session, splits, worker=True)
    tune = session.tune  # the batch may be capped for large images
    tuner = sessions.build_tuner(session, splits, worker=True, balance=balance, lr_scale=lr_scale)
    sessions.freeze_heap()
    fit = sessions.search_inputs(session, splits, balance)
    try:
        tuner.search(epochs=tune.max_epochs, verbose=0, **fit)
    except KeyboardInterrupt:
        tuner.abort_trial("KILLED")
        raise
    except BaseException:
        tuner.abort_trial("FAILED")
        raise
    return 0
