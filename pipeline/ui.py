"""``python -m pipeline ui``: the MLflow UI on 127.0.0.1 against the project's store.

The store is found as every stage finds it (``mlflow.tracking_uri`` in params.yaml,
``MLFLOW_TRACKING_URI`` winning, a relative SQLite path taken from the project root), and
``mlflow server`` from this environment serves it in the foreground until Ctrl-C. A
tracking URI that is already an MLflow server is only printed: there is nothing to start.
"""

import argparse
import errno
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from pipeline import paths, tracking
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.net import NO_PROXY, wait_ready
from pipeline.redact import redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# MLflow 3 opens an experiment on its GenAI overview; this is the runs table.
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy stores, +driver allowed
STOP_TIMEOUT_S = 15


def parser():
    p = stage_parser("ui")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="interface to listen on (default: %(default)s); any other exposes a UI "
        "that has no authentication",
    )
    return p


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a port number 1-65535")
    return int(text)


def main(argv=None) -> int:
    """Print where to look, then run ``mlflow server`` on the store until Ctrl-C."""
    args = parser().parse_args(argv)
    params = load_params(args.params)
    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    kind = store_kind(uri)
    if kind == "server":
        shown = redact(uri)
        print(f"mlflow.tracking_uri is the MLflow server {shown}: open {shown} (nothing to start)")
        return 0
    check_store(uri, kind)
    if find_spec("mlflow") is None:
        raise PipelineError(
            f"mlflow is not installed in {Path(sys.executable).parent.parent}; "
            "run `make venv` (or pip install -r requirements.lock)"
        )
    if not is_loopback(args.host):
        log(
            f"ui: warning: --host {args.host} lets other machines reach the MLflow UI, which has "
            f"no authentication: anyone who can reach port {args.port} can read, change and "
            "delete runs and models. MLflow answers only Host headers of localhost and private "
            "addresses; set MLFLOW_SERVER_ALLOWED_HOSTS to add a name"
        )
    check_port(args.host, args.port)

    url = browser_url(args.host, args.port)
    print(f"MLflow UI for {redact(uri)}: starting on {url} (Ctrl-C stops it)", flush=True)
    command = server_command(uri, args.host, args.port)
    return serve(command, url, tracking.experiment_name(params), store_env(uri))


def store_kind(uri: str) -> str:
    """``server`` (http/https), ``db`` (SQLAlchemy) or ``files`` (an mlruns folder)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return "server"
    if scheme in DB_SCHEMES:
        return "db"
    if scheme in ("", "file"):
        return "files"
    raise PipelineError(
        f"cannot start an MLflow UI for tracking URI {redact(uri)!r}; open that service's own UI, "
        "or set mlflow.tracking_uri to a sqlite:/// store"
    )


def check_store(uri: str, kind: str) -> None:
    """A local store must exist: ``mlflow server`` would create an empty one instead."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif kind == "files":
        path = Path(uri.removeprefix("file://"))
    else:
        return  # a database server: mlflow reports it if it cannot connect
    if not path.exists():
        raise PipelineError(
            f"no MLflow store at {path}: run `make run` (or a stage such as "
            "`python -m pipeline tune`) first, or point mlflow.tracking_uri / "
            "MLFLOW_TRACKING_URI at your store"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_port(host: str, port: int) -> None:
    """Fail with one line if ``host:port`` cannot be listened on (checked before starting)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # uvicorn sets SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror:
            raise PipelineError(f"--host {host}: not a known host name or address") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else port - 1
                raise PipelineError(
                    f"port {port} on {host} is already in use (another MLflow UI?); "
                    f"pick another: make ui UI_PORT={other} (or --port {other})"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PipelineError(f"--host {host}: not an address of this machine") from None
            raise PipelineError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def browser_url(host: str, port: int) -> str:
    """The URL to open on this machine (a wildcard address is opened as 127.0.0.1)."""
    if host in ("0.0.0.0", "::", ""):
        host = DEFAULT_HOST
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def list_experiments(url: str) -> list[tuple[str, str]]:
    """``(id, name)`` of the active experiments, from the running server's REST API."""
    with NO_PROXY.open(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1000", timeout=30
    ) as r:
        found = json.load(r).get("experiments", [])
    pairs = [(e["experiment_id"], e["name"]) for e in found]
    return sorted(pairs, key=lambda e: (0, int(e[0]), "") if e[0].isdigit() else (1, 0, e[0]))


def print_links(url: str, project_experiment: str) -> None:
    """Where to click: the runs table of each experiment, this project's marked."""
    print(f"MLflow UI ready: {url}")
    try:
        experiments = list_experiments(url)
    except (OSError, ValueError, KeyError) as exc:  # e.g. HTTP 403 for a public --host
        print(f"  (could not list the experiments: {exc})", flush=True)
        return
    for exp_id, name in experiments:
        note = " (this project's)" if name == project_experiment else ""
        print(f"  experiment {name!r}{note}: {url}/{RUNS_VIEW.format(id=exp_id)}")
    if project_experiment not in (name for _, name in experiments):
        print(f"  no experiment {project_experiment!r} yet: `make run` creates it")
    sys.stdout.flush()


def server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow server`` of this environment for ``uri`` (the store itself: ``store_env``)."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--workers", "1",  # a UI for one person; each worker is a whole copy of MLflow
        "--uvicorn-opts", "--no-access-log",  # a line per request would bury the links
    ]  # fmt: skip
    if uri.startswith("sqlite:"):
        # Where tracking.experiment_id puts the stages' artifacts; used for experiments
        # created in the UI. The stages' experiments carry their own absolute location.
        command += ["--artifacts-destination", paths.MLARTIFACTS.resolve().as_uri()]
    return command


def store_env(uri: str) -> dict[str, str]:
    """The server's store, passed in its environment: a command line is visible to ``ps``
    and a database URI may carry a password."""
    # The registry on the same store, as the stages have it; mlflow warns otherwise.
    return {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_REGISTRY_STORE_URI": uri}


def serve(
    command: list[str], url: str, project_experiment: str, store: dict[str, str] | None = None
) -> int:
    """Run the server until it exits or Ctrl-C / SIGTERM / SIGHUP stops it (then exit 0)."""
    env = {**os.environ, **(store or {})}
    # Job execution runs MLflow's GenAI jobs (judges, prompt optimisation) in a separate
    # consumer with 10 workers; this project has none.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Printed at every start, about MLflow's own use of starlette: nothing a user can act on.
    env.setdefault("PYTHONWARNINGS", "ignore:starlette.middleware.wsgi is deprecated")
    # Its own process group: a terminal's Ctrl-C reaches only this process, which passes on
    # exactly one SIGINT, and a SIGKILL to the group leaves no uvicorn behind.
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    previous = signal.getsignal(signal.SIGHUP)
    if previous is not signal.SIG_IGN:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, _raise_interrupt)  # the terminal was closed
    try:
        if wait_ready(proc, url):
            print_links(url, project_experiment)
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        log("ui: MLflow UI stopped")
        return 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    if code != 0:
        raise PipelineError(f"mlflow server exited with code {code} (its messages are above)")
    return 0


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to ``mlflow server``, then SIGKILL to its group if not gone in STOP_TIMEOUT_S."""
    try:
        # mlflow passes it on to uvicorn; a second SIGINT would make uvicorn force-quit.
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # hung, or a second Ctrl-C
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    _signal_group(proc, signal.SIGKILL)  # any worker its leader left behind


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(guarded(main))
