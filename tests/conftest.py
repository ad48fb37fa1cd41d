"""Fixtures the tests make themselves: tiny IDX files, image folders, a loopback HTTP server,
a real `mlflow server`."""

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.net import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array as an IDX file (gzipped by default)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 20, classes: int = 10):
    """The four Fashion-MNIST IDX files with random 28x28 images, balanced labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % classes)
    return folder


def save_image(path: Path, size=(20, 16), mode="RGB", seed=0, fmt=None) -> Path:
    """A random image of ``size`` (w, h) and ``mode``; format from the suffix."""
    rng = np.random.default_rng(seed)
    channels = {"L": None, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    shape = (size[1], size[0]) + ((channels,) if channels else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """cats/dogs/birds with PNG + JPEG of mixed sizes and modes, one corrupt and one truncated."""
    root = tmp_path / "pets"
    specs = {"cat": ("RGB", ".png"), "dog": ("L", ".jpg"), "bird": ("RGBA", ".png")}
    for c, (cls, (mode, ext)) in enumerate(specs.items()):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            size = (24, 24) if i % 3 else (30, 18)
            m = "RGB" if mode == "RGBA" and i % 2 else mode
            save_image(root / cls / f"{i}{ext}", size, m, seed=100 * c + i)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "notes.txt").write_text("not an image, ignored")
    return root


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def do_GET(self):  # noqa: N802 - the stdlib's name
        name = self.path.lstrip("/")
        self.hits[name] = self.hits.get(name, 0) + 1
        route = self.routes.get(name)
        if route is None:
            self.send_error(404)
            return
        body, behaviour = route
        if behaviour.startswith("fail") and self.hits[name] <= int(behaviour[4:] or 1):
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1. ``serve(name, body, behaviour)`` adds a route.

    Behaviours: "ok"; "drop" (sends half the body, then closes); "failN" (HTTP 503 for the
    first N requests, then the body).
    """
    handler = type("Handler", (_Handler,), {"routes": {}, "hits": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    class Server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        hits = handler.hits

        @staticmethod
        def serve(name: str, body: bytes, behaviour: str = "ok") -> str:
            handler.routes[name] = (body, behaviour)
            return f"{Server.url}/{name}"

    yield Server
    server.shutdown()
    server.server_close()


class MlflowServer(NamedTuple):
    url: str  # http://127.0.0.1:<port>
    store: Path  # its SQLite file and artifacts folder


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` (no authentication) on a free loopback port, SQLite backend."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT,
            # MLflow's GenAI job runner: 10 more processes no test here has a use for.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_ready(proc, url, timeout=120):
                pytest.fail(f"mlflow server did not start: {log_path.read_text()[-3000:]}")
            yield MlflowServer(url, store)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project root (cwd) with a params.yaml writer: ``project.params(**sections)``."""
    root = tmp_path / "proj"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no stray cache hits

    class Project:
        path = root

        @staticmethod
        def params(**sections) -> Path:
            path = root / "params.yaml"
            path.write_text(yaml.safe_dump(sections))
            return path

    return Project


def run_cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m pipeline ...`` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def dvc_project(root: Path, extra_files=(), **params_changes) -> Path:
    """A copy of the project (code, search spaces, dvc.yaml, params.yaml) in a new git + DVC
    repo at ``root``, on the digits dataset; ``params_changes`` update params.yaml sections.
    """
    import shutil

    bin_dir = Path(sys.executable).parent
    if not shutil.which("dvc", path=str(bin_dir)):
        pytest.skip("dvc is not installed in this environment")
    root.mkdir(parents=True)
    for name in ("pipeline", "search_spaces"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "data/images/README.md", *extra_files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["dataset"] = "digits"
    for section, values in params_changes.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # `dvc exp run` commits through pygit2, which needs an identity; CI machines have none.
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "pipeline tests"],
        ["git", "config", "user.email", "tests@localhost"],
        ["dvc", "init", "-q"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def write_processed(folder: Path, splits: dict, meta: dict) -> Path:
    """A processed folder as the preprocess stage writes it: ``splits`` maps a split name to
    ``(uint8 images, labels)``; ``meta`` is completed with the current format."""
    from pipeline.data import prepare, store

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        x = np.asarray(x, dtype=np.uint8)
        prepare.write_split(folder, name, x.shape[1:], [(x, np.asarray(y, dtype=np.int64))])
    full = {"format": store.FORMAT, "pixels": store.PIXELS, **meta}
    (folder / "meta.json").write_text(json.dumps(full))
    return folder


def read_processed(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one processed split, read whole (tests only)."""
    folder = Path(folder)
    return np.load(folder / f"{split}_x.npy"), np.load(folder / f"{split}_y.npy")
