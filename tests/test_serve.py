"""`mlflow models serve` of the registered champion answers with class names."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline import register
from pipeline.net import free_port, wait_ready
from tests.test_register import CLASSES, templates, write_candidate, write_processed


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.e2e  # the project marks tests that drive the mlflow server e2e
def test_mlflow_models_serve_champion(project, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project.params(data={"dataset": "digits"}, mlflow={"tracking_uri": "sqlite:///mlflow.db"})
    write_processed(project.path)
    write_candidate(project.path, "good")
    assert register.main([]) == 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project.path / 'mlflow.db'}"}
    env.pop("PYTHONPATH", None)
    # mlflow starts `uvicorn` by name: the venv's bin must be on PATH (an activated venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    elsewhere = tmp_path / "elsewhere"  # the model must not need the project as cwd
    elsewhere.mkdir()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", "models:/digits-classifier@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        try:
            assert wait_ready(proc, url, timeout=180, path="/ping"), (
                f"mlflow models serve not ready (exit code {proc.returncode})"
            )
        except AssertionError:
            log.flush()
            raise AssertionError((tmp_path / "serve.log").read_text()[-4000:]) from None
        # 0-255 pixels, as the splits store them (JSON integers; MLflow casts them to uint8).
        x = np.stack([templates()[:, k].reshape(8, 8, 1) for k in (2, 0, 1)]) * 255
        answer = post(url, {"inputs": x.astype(int).tolist()})
        rows = answer["predictions"]
        assert [r["label"] for r in rows] == ["gamma", "alpha", "beta"]
        for r in rows:
            assert set(r["probabilities"]) == set(CLASSES)
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert r["probability"] == pytest.approx(max(r["probabilities"].values()))
        # 0-255 numbers as JSON floats too; a dark image is not rescaled by a guess.
        pixels = post(url, {"inputs": (x[:1] * 0.1).tolist()})["predictions"]
        assert pixels[0]["label"] == "gamma"
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(url, {"inputs": (x[:1] + 300).tolist()})
        assert refused.value.code == 400
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
