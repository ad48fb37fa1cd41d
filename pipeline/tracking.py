"""MLflow: the tracking store, experiments, run tags, and no run left RUNNING.

Everything goes through ``MlflowClient`` with explicit run ids, never MLflow's global
"active run", so a tuner's trials, a chief and its workers can log side by side.
"""

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.console import log
from pipeline.errors import ConfigError
from pipeline.redact import redact

HOST_TAG = "pipeline.host"
PID_TAG = "pipeline.pid"
ROLE_TAG = "pipeline.role"
PARENT_TAG = "mlflow.parentRunId"

# MLflow's own limits: longer values are rejected, so they are cut with a marker.
_PARAM_MAX = 6000


def tracking_uri(params_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the params' URI; relative SQLite paths resolved.

    MLflow reads ``sqlite:///mlflow.db`` relative to the working directory; resolving it
    here means worker processes and later stages all open the same file.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def client(uri: str):
    """An ``MlflowClient`` on ``uri`` (MLflow imported only when needed: it is slow).

    Not ``mlflow.set_tracking_uri``: it also sets MLFLOW_TRACKING_URI in the environment,
    which would then override the params of every later run in this process.
    """
    import mlflow

    if redact(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends on a server,
        # password included; the stages' own lines name the run, masked.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

    return mlflow.MlflowClient(tracking_uri=uri)


def open_experiment(uri: str, name: str):
    """``(client, experiment id)``; an unreachable or broken store is a one-line error."""
    from pipeline.errors import PipelineError

    mlflow_client = client(uri)
    try:
        return mlflow_client, experiment_id(mlflow_client, name)
    except ConfigError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"MLflow store {uri}: {first[:300]}; check mlflow.tracking_uri in params.yaml "
            "or MLFLOW_TRACKING_URI (is the server running?)"
        ) from None


def find_run(mlflow_client, run_id: str):
    """Run ``run_id``, or None when this store has no such run (deleted for good, or
    another store's id). Any other MLflow error (the server unreachable, no permission)
    is a one-line PipelineError: a run that cannot be read is not a missing one."""
    from mlflow.exceptions import MlflowException

    from pipeline.errors import PipelineError

    try:
        return mlflow_client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        first = (str(exc).strip().splitlines() or [exc.error_code])[0][:300]
        raise PipelineError(
            f"MLflow: reading run {run_id} failed ({exc.error_code}): {first}"
        ) from None


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment ``name``, created (artifacts under mlartifacts/) if missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"MLflow experiment {name!r} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) "
                "or set mlflow.experiment_name to a new name"
            )
        return found.experiment_id
    location = None
    if mlflow_client.tracking_uri.startswith("sqlite:"):
        # The SQLite store's default artifact root is ./mlruns of whoever runs first.
        location = (paths.MLARTIFACTS.resolve() / name).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it between our get and create
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def closing_run(mlflow_client, run_id: str, own: bool = True) -> Iterator[None]:
    """End ``run_id`` FINISHED when the block succeeds, KILLED on Ctrl-C, else FAILED.

    With ``own=False`` (a run another stage opened and will close) nothing is ended.
    """
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if own:
            mlflow_client.set_terminated(run_id, status=status)


def process_tags(role: str) -> dict[str, str]:
    """Tags that let a later start find this process's runs if it is killed."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), ROLE_TAG: role}


def git_commit() -> str:
    """The checked-out commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def data_tags(meta_file: Path) -> dict[str, str]:
    """Tags for the processed data: dataset, a digest of its source files, each file's hash."""
    meta = json.loads(Path(meta_file).read_text())
    checksums = meta.get("source_checksums", {})
    import hashlib

    digest = hashlib.sha256(
        json.dumps(
            {"sources": checksums, "preprocess": meta.get("preprocess")}, sort_keys=True
        ).encode()
    ).hexdigest()
    tags = {"data.dataset": str(meta.get("dataset")), "data.sha256": digest}
    tags.update({f"data.source.{name}": str(sha) for name, sha in sorted(checksums.items())})
    return tags


def params_list(values: Mapping[str, Any]):
    """MLflow ``Param`` objects for ``values`` (None as ``None``, long values cut)."""
    from mlflow.entities import Param

    return [Param(key, str(value)[:_PARAM_MAX]) for key, value in values.items()]


def log_metrics(mlflow_client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite ``metrics`` in one call (MLflow stores NaN, but the UI plots poorly)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if batch:
        mlflow_client.log_batch(run_id, metrics=batch)


def mark_orphans_killed(mlflow_client, exp_id: str) -> int:
    """Mark KILLED the RUNNING runs whose process (on this host) is gone; return how many.

    A SIGKILL gives a process no chance to close its runs; the next start cleans up.
    Runs of live processes, or from other hosts, are left alone.
    """
    runs = mlflow_client.search_runs(
        [exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    host = socket.gethostname()
    closed = 0
    for run in runs:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if _pipeline_process_alive(int(tags[PID_TAG])):
            continue
        mlflow_client.set_terminated(run.info.run_id, status="KILLED")
        closed += 1
    if closed:
        log(f"mlflow: marked {closed} run(s) of a killed process as KILLED")
    return closed


def _pipeline_process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid from an earlier life in a reused-pid container
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid that now belongs to something else is not ours
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"pipeline" in cmdline


def experiment_name(params) -> str:
    """The MLflow experiment of every stage: ``mlflow.experiment_name``, else the dataset."""
    return params.mlflow.experiment_name or params.data.dataset
