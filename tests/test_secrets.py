"""A password in the tracking URI or the mirror URL never reaches an output, a log or MLflow."""

import base64
import http.server
import json
import signal
import threading
from pathlib import Path

import pytest
import yaml

from pipeline import cli, tracking
from pipeline.config import DataParams
from pipeline.data import catalog
from pipeline.data.acquire import acquire
from pipeline.fileio import sha256_of
from pipeline.net import free_port
from pipeline.redact import redact
from pipeline.tuning import state
from tests.conftest import make_idx_dataset, run_cli
from tests.tune_helpers import all_runs, tune_params

PASSWORD = "s3cr3tPassw0rd"
STAGES = ("download", "preprocess", "tune", "train", "evaluate", "register")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:s3cr3t@host:5000", "http://user:***@host:5000"),
        ("https://user:p@ss@host/x?y=1", "https://user:***@host/x?y=1"),
        ("postgresql+psycopg2://u:pw@db:5432/db", "postgresql+psycopg2://u:***@db:5432/db"),
        ("mysql://u:p/w@h/db", "mysql://u:***@h/db"),  # SQLAlchemy reads "p/w" as the password
        ("https://host/x?token=abc&n=1", "https://host/x?token=***&n=1"),
        ("s3://b/k?X-Amz-Signature=ab&X-Amz-Credential=AK%2F1",
         "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***"),
        ("http://tok@host", "http://tok@host"),  # a user name alone is kept
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////srv/a:b@c/mlflow.db", "sqlite:////srv/a:b@c/mlflow.db"),
        ("file:///x:y@z", "file:///x:y@z"),
        ("store http://u:pw@h/: API request to http://u:pw@h/api failed (x@y)",
         "store http://u:***@h/: API request to http://u:***@h/api failed (x@y)"),
    ],
)  # fmt: skip
def test_redact_masks_passwords_and_tokens_and_keeps_everything_else(uri, shown):
    assert redact(uri) == shown
    assert redact(shown) == shown


def test_the_tune_state_keeps_a_digest_that_ignores_the_password_and_reads_old_files():
    uri = f"http://user:{PASSWORD}@host:5000"
    digest = state.store_digest(uri)
    assert PASSWORD not in digest and digest == state.store_digest("http://user:new@host:5000")
    assert not state.store_changed({"tracking_uri_sha256": digest}, uri)
    assert state.store_changed({"tracking_uri_sha256": digest}, "http://user:x@other:5000")
    # A state file from before the digest holds the plain URI.
    assert not state.store_changed({"tracking_uri": uri}, uri)
    assert state.store_changed({"tracking_uri": "sqlite:////old/mlflow.db"}, uri)
    assert not state.store_changed({}, uri)


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = self.files.get(self.path.lstrip("/"))
        if self.headers.get("Authorization") != self.expected:
            self.send_error(401)
        elif body is None:
            self.send_error(404)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def auth_server():
    """A loopback HTTP server that answers only ``user:PASSWORD`` (HTTP Basic); 401 else."""
    token = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    handler = type(
        "Handler", (_AuthHandler,), {"files": {}, "seen": [], "expected": f"Basic {token}"}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.port = server.server_address[1]
    yield handler
    server.shutdown()
    server.server_close()


def test_a_mirror_url_with_a_password_authenticates_and_is_recorded_masked(
    auth_server, tmp_path, monkeypatch
):
    files = make_idx_dataset(tmp_path / "fixture")
    remotes = []
    for f in sorted(files.iterdir()):
        auth_server.files[f"mirror/{f.name}"] = f.read_bytes()
        canonical = f"http://127.0.0.1:9/{f.name}"  # never reached: the mirror answers
        remotes.append(catalog.RemoteFile(f.name, canonical, (sha256_of(f),)))
    ds = catalog.Dataset("fashion_mnist", tuple(remotes), catalog.FASHION_CLASSES)
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist", ds)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    mirror = f"http://user:{PASSWORD}@127.0.0.1:{auth_server.port}/mirror"
    dest = tmp_path / "out"
    dest.mkdir()
    lines = []

    manifest = acquire(DataParams(mirror_url=mirror), dest, lines.append, backoff=0.01)

    assert {path for path, _ in auth_server.seen} == {f"/mirror/{f.name}" for f in files.iterdir()}
    assert all(auth == auth_server.expected for _, auth in auth_server.seen)
    shown = f"http://user:***@127.0.0.1:{auth_server.port}/mirror/"
    assert all(src.startswith(shown) for src in manifest["sources"].values()), manifest
    assert PASSWORD not in json.dumps(manifest) + "\n".join(lines)


def test_an_unreachable_store_is_a_one_line_error_without_the_password(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow retries for minutes
    uri = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    previous = signal.getsignal(signal.SIGTERM)  # guarded() installs its own
    try:
        code = cli.guarded(lambda argv: tracking.open_experiment(uri, "digits"))
    finally:
        signal.signal(signal.SIGTERM, previous)

    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: MLflow store http://user:***@127.0.0.1:"), err
    assert PASSWORD not in err


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.integration
def test_no_stage_writes_or_prints_the_password_of_the_tracking_uri_or_mirror_url(
    project, mlflow_server, monkeypatch
):
    url, store = mlflow_server
    # MLflow's own "View run ... at <URI>" lines must be off because of the password, not
    # because the environment running the tests switched them off.
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    root = project.path
    tune_params(root, max_trials=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["mirror_url"] = f"http://user:{PASSWORD}@127.0.0.1:1/"
    params["train"] = {"epochs": 1, "batch_size": 64}
    params["evaluate"] = {"misclassified_examples": 4}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"MLFLOW_TRACKING_URI": url.replace("http://", f"http://user:{PASSWORD}@")}

    printed = {}
    for args in [*[(s,) for s in STAGES], ("ui",), ("download", "--help")]:
        done = run_cli(*args, cwd=root, env=env)
        assert done.returncode == 0, f"{args}:\n{done.stderr[-3000:]}"
        printed[" ".join(args)] = done.stdout + done.stderr
        assert PASSWORD not in printed[" ".join(args)], f"{args} printed the password"
    assert f"server {url.replace('http://', 'http://user:***@')}: open" in printed["ui"]
    assert "data.mirror_url = http://user:***@127.0.0.1:1/" in printed["download --help"]

    outputs = [root / "models" / "tuner" / "pipeline_state.json", root / "reports" / "report.html"]
    assert all(p.is_file() for p in outputs) and (root / "data" / "raw").is_dir()
    leaked = [f for f in _files_holding(root, PASSWORD.encode()) if Path(f) != root / "params.yaml"]
    assert not leaked, leaked
    assert not _files_holding(store, PASSWORD.encode())  # the server's artifacts
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    runs = all_runs(client)
    assert {r.data.tags.get("pipeline.role") for r in runs} >= {"tune-parent"}
    recorded = [(r.data.tags, r.data.params) for r in runs]
    recorded += [dict(v) for v in client.search_model_versions()]
    assert PASSWORD not in repr(recorded)
