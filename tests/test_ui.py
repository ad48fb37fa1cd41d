"""`python -m pipeline ui` (what `make ui` runs): the store it serves, its one-line errors,
a real start and Ctrl-C, and (e2e) the trials of a real search in headless Chromium."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import ui
from pipeline.errors import PipelineError
from pipeline.net import NO_PROXY, free_port, wait_ready
from tests.conftest import ROOT, run_cli

SCREENSHOTS = ROOT / "reports" / "ui"  # gitignored; CI keeps them for people to look at
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # no traceback
    return lines[0]


@pytest.mark.parametrize("where", ["params", "env"])
def test_an_mlflow_server_uri_is_printed_and_nothing_is_started(project, no_env_uri, where):
    server = "http://10.1.2.3:5000"
    project.params(mlflow={"tracking_uri": server if where == "params" else "sqlite:///x.db"})
    env = {"MLFLOW_TRACKING_URI": server} if where == "env" else {}
    result = run_cli("ui", cwd=project.path, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"MLflow server {server}: open {server} (nothing to start)" in result.stdout
    assert not (project.path / "x.db").exists()


@pytest.mark.parametrize(
    ("params_uri", "env_uri", "expected"),
    [
        ("sqlite:///mlflow.db", None, "mlflow.db"),  # relative: the project root's
        ("sqlite:///params.db", "sqlite:///stores/env.db", "stores/env.db"),  # the env wins
    ],
)
def test_a_missing_store_is_one_line_naming_the_resolved_file(
    project, no_env_uri, params_uri, env_uri, expected
):
    project.params(mlflow={"tracking_uri": params_uri})
    env = {"MLFLOW_TRACKING_URI": env_uri} if env_uri else {}
    error = _one_line_error(run_cli("ui", cwd=project.path, env=env, timeout=60))
    assert f"no MLflow store at {project.path / expected}: run `make run`" in error
    assert not list(project.path.glob("**/*.db"))  # not created empty behind the user's back


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_port_in_use_is_one_line_suggesting_another(project, no_env_uri, host):
    project.params(mlflow={"tracking_uri": "sqlite:///mlflow.db"})
    (project.path / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("ui", "--port", str(port), "--host", host, cwd=project.path, timeout=60)
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr
    assert f"port {port} on {host} is already in use" in error
    assert f"make ui UI_PORT={port + 1}" in error
    warned = "has no authentication" in result.stderr
    assert warned == (host == "0.0.0.0")  # only a UI reachable from elsewhere is warned of


@pytest.mark.integration
def test_a_server_that_cannot_start_ends_the_command_with_an_error(project, no_env_uri):
    project.params(mlflow={"tracking_uri": "sqlite:///mlflow.db"})
    (project.path / "mlflow.db").write_text("not a database")
    result = run_cli("ui", "--port", str(free_port()), cwd=project.path, timeout=120)
    assert result.returncode == 1
    assert "file is not a database" in result.stderr  # mlflow's own message
    assert result.stderr.strip().splitlines()[-1] == (
        "error: mlflow server exited with code 1 (its messages are above)"
    )


def test_hosts_urls_and_store_kinds():
    assert ui.is_loopback("127.0.0.1") and ui.is_loopback("::1") and ui.is_loopback("localhost")
    assert not ui.is_loopback("0.0.0.0") and not ui.is_loopback("192.168.1.5")
    assert not ui.is_loopback("example.org")
    assert ui.browser_url("0.0.0.0", 5001) == "http://127.0.0.1:5001"  # what a browser opens
    assert ui.browser_url("::1", 5001) == "http://[::1]:5001"
    assert ui.store_kind("sqlite:////abs/mlflow.db") == "db"
    assert ui.store_kind("postgresql+psycopg2://u@h/db") == "db"
    assert ui.store_kind("file:///abs/mlruns") == ui.store_kind("mlruns") == "files"
    assert ui.store_kind("https://mlflow.example.org") == "server"
    with pytest.raises(PipelineError, match="cannot start an MLflow UI for tracking URI"):
        ui.store_kind("databricks://profile")


class UiProcess:
    """``python -m pipeline ui --port PORT`` in the background, as `make ui` runs it."""

    def __init__(self, root: Path, logs: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = logs / "ui.out", logs / "ui.err"
        # A shell that started pytest in the background ignores SIGINT, and a child inherits
        # that (but not a handler): with a handler here, the UI gets Python's default one.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(self.out, "w") as out, open(self.err, "w") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "ui", "--port", str(self.port)],
                    cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=out, stderr=err,
                )  # fmt: skip
        finally:
            signal.signal(signal.SIGINT, previous)

    def wait_ready(self, timeout: float = 120) -> None:
        if wait_ready(self.proc, self.url, timeout):
            return
        if self.proc.poll() is not None:
            raise AssertionError(f"ui exited with {self.proc.returncode}:\n{self.logs()}")
        raise AssertionError(f"the UI did not answer /health in {timeout} s:\n{self.logs()}")

    def wait_for_line(self, line: str, timeout: float = 60) -> list[str]:
        """The UI's stdout once ``line`` is in it (it prints the links when it is ready)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = self.out.read_text().splitlines()
            if line in lines:
                return lines
            time.sleep(0.2)
        raise AssertionError(f"no line {line!r} in the UI's output:\n{self.logs()}")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the ui process; its exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill_leftovers(self) -> None:
        """Teardown: nothing of this UI survives a failed test (mlflow runs in its own group)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _pids_with_args("mlflow", "--port", str(self.port)):
            os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        return self.out.read_text() + self.err.read_text()[-4000:]


def _pids_with_args(*needles: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(n.encode() in args for n in needles):
            found.append(int(proc.name))
    return found


@pytest.fixture
def start_ui(tmp_path):
    started = []

    def start(root: Path) -> UiProcess:
        process = UiProcess(root, tmp_path)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill_leftovers()


def _get(url: str) -> bytes:
    with NO_PROXY.open(url, timeout=30) as response:
        return response.read()


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.integration
def test_ui_serves_the_project_store_and_its_artifacts_and_ctrl_c_stops_it(
    project, no_env_uri, start_ui
):
    """A store made the way the stages make it; a real `mlflow server`; SIGINT ends it."""
    import json

    from pipeline import tracking

    project.params(data={"dataset": "digits"})
    uri = tracking.tracking_uri("sqlite:///mlflow.db")
    client, exp_id = tracking.open_experiment(uri, "digits")
    run_id = client.create_run(exp_id, run_name="trial-0").info.run_id
    client.log_param(run_id, "family", "mlp")
    (project.path / "leaderboard.csv").write_text("trial_id,family\n0,mlp\n")
    client.log_artifact(run_id, str(project.path / "leaderboard.csv"), "tuning")
    client.set_terminated(run_id)

    ui_process = start_ui(project.path)
    runs_url = f"{ui_process.url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    lines = ui_process.wait_for_line(f"  experiment 'digits' (this project's): {runs_url}")
    assert lines[0] == f"MLflow UI for {uri}: starting on {ui_process.url} (Ctrl-C stops it)"
    assert f"MLflow UI ready: {ui_process.url}" in lines
    assert b"<title>MLflow</title>" in _get(f"{ui_process.url}/")  # the UI itself, allowed
    found = json.loads(
        _get(f"{ui_process.url}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}").decode()
    )
    assert found["run"]["data"]["params"] == [{"key": "family", "value": "mlp"}]
    # The artifacts the stages wrote under mlartifacts/ come through the UI's own route.
    artifact = _get(f"{ui_process.url}/get-artifact?path=tuning/leaderboard.csv&run_uuid={run_id}")
    assert artifact == b"trial_id,family\n0,mlp\n"

    assert ui_process.interrupt() == 0
    assert "Traceback" not in ui_process.err.read_text()
    assert "MLflow UI stopped" in ui_process.err.read_text()
    assert _port_is_free(ui_process.port)
    assert not _pids_with_args("mlflow", "--port", str(ui_process.port))


# --- the browser test -------------------------------------------------------------------
# Selectors are MLflow 3.17's (the lock pins it): ag-grid rows carry the run id in `row-id`
# and cells their column in `col-id` (params.`family`, metrics.`val_accuracy`); the column
# selector is a tree under data-testid=column-selector-tree.
WAIT_MS = 90_000  # a cold UI on a busy 2-core machine takes a while to render
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
]
COLUMN_GROUP = re.compile(r"^(Attributes|Metrics|Parameters|Tags)( \(\d+\))?$")


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} missing: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)  # .ci/run installs it: a skip there would hide the check
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def searched(project, no_env_uri):
    """A project whose store holds a real 4-trial search on digits (mlp and simple_cnn)."""
    from pipeline import download, preprocess
    from pipeline.tune import main as tune_main
    from tests.tune_helpers import mlflow_client, parent_and_trials, tune_params

    project.params(data={"dataset": "digits"})
    assert download.main([]) == 0 and preprocess.main([]) == 0
    tune_params(project.path, max_trials=4)
    assert tune_main(["--params", "params.yaml"]) == 0
    parents, trials = parent_and_trials(mlflow_client(project.path))
    assert len(parents) == 1 and len(trials) == 4
    return project.path, parents[0], sorted(trials, key=lambda r: r.info.run_name)


def _add_column(page, group: str, name: str) -> None:
    """Tick ``name`` under ``group`` (Metrics, Parameters, ...) in the Columns selector."""
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill(name)
    nodes = page.locator('[data-testid="column-selector-tree"] .du-bois-light-tree-treenode')
    nodes.first.wait_for()
    # The tree is flat: a group's header row, then its columns (a tag may share the name).
    texts = [t.strip() for t in nodes.all_inner_texts()]
    in_group, index = False, None
    for i, text in enumerate(texts):
        if COLUMN_GROUP.match(text):
            in_group = text.startswith(group)
        elif in_group and text == name:
            index = i
    assert index is not None, f"no column {name!r} under {group} in the selector: {texts}"
    nodes.nth(index).locator(".du-bois-light-tree-checkbox").click()
    page.keyboard.press("Escape")


def _section(page, title: str):
    """A collapsible section of the compare view (Parameters, Metrics, Tags)."""
    header = page.locator(".du-bois-light-collapse-header", has_text=re.compile(f"^{title}$"))
    return page.locator(".du-bois-light-collapse-item", has=header)


def _screenshot(page, path: Path) -> None:
    """The whole page: MLflow scrolls inside a panel, so grow the viewport to fit it first."""
    overflow = page.evaluate(
        """() => Math.max(0, ...Array.from(document.querySelectorAll('*'), e => {
            const y = getComputedStyle(e).overflowY;
            return y === 'auto' || y === 'scroll' ? e.scrollHeight - e.clientHeight : 0;
        }))"""
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(size["height"] + overflow, 6000)})
    page.wait_for_timeout(1000)  # let virtualised tables render the rows now in view
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path  # a real picture
    width = int.from_bytes(data[16:20], "big")  # the IHDR chunk
    assert width == size["width"], (path, width)


@pytest.mark.e2e
def test_trials_of_a_real_search_in_the_mlflow_ui_in_chromium(browser, searched, start_ui):
    """`make ui`'s server, headless Chromium: the trials with their family and val_accuracy,
    then the compare view of two of them; screenshots in reports/ui/."""
    from playwright.sync_api import expect

    root, parent, trials = searched
    exp_id = parent.info.experiment_id
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui_process = start_ui(root)
    runs_url = f"{ui_process.url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    ui_process.wait_for_line(f"  experiment 'digits' (this project's): {runs_url}")

    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.set_default_timeout(WAIT_MS)
    page.goto(runs_url)
    left = page.locator(".ag-pinned-left-cols-container")  # the pinned run-name column
    center = page.locator(".ag-center-cols-container")  # the scrolling columns
    expect(left.locator(f'[row-id="{parent.info.run_id}"]')).to_contain_text(
        parent.info.run_name, timeout=WAIT_MS
    )
    close_assistant = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close_assistant.count():
        close_assistant.click()  # a side panel that would hide the columns
    # The trials are the tune run's children, listed under it once it is expanded.
    left.locator(f'[row-id="{parent.info.run_id}"] button').first.click()
    for run in trials:
        expect(left.locator(f'[row-id="{run.info.run_id}"]')).to_contain_text(run.info.run_name)

    _add_column(page, "Parameters", "family")
    _add_column(page, "Metrics", "val_accuracy")
    expect(page.locator('.ag-header-cell[col-id="params.`family`"]')).to_contain_text("family")
    expect(page.locator('.ag-header-cell[col-id="metrics.`val_accuracy`"]')).to_be_visible()
    for run in trials:
        row = center.locator(f'[row-id="{run.info.run_id}"]')
        family = row.locator('[col-id="params.`family`"]')
        expect(family).to_have_text(run.data.params["family"])
        expect(family).to_be_in_viewport()  # on screen, so in the screenshot too
        shown = row.locator('[col-id="metrics.`val_accuracy`"]')
        expect(shown).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
        expect(shown).to_be_in_viewport()
        assert float(shown.inner_text()) == pytest.approx(
            run.data.metrics["val_accuracy"], abs=1e-3
        )
    _screenshot(page, SCREENSHOTS / "runs.png")

    # Two trials, of different families where the search tried both, compared as a user does.
    family = trials[0].data.params["family"]
    other = [r for r in trials[1:] if r.data.params["family"] != family] or trials[1:]
    pair = [trials[0], other[0]]
    for run in pair:
        left.locator(f'[row-id="{run.info.run_id}"] input.ag-checkbox-input').check()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_url(re.compile(r"#/compare-runs\?runs="))
    ids_row = page.locator("tr", has=page.locator("th", has_text=re.compile(r"^Run ID:$")))
    expect(ids_row).to_contain_text(pair[0].info.run_id, timeout=WAIT_MS)
    shown_ids = [t.strip() for t in ids_row.locator("th").all_inner_texts()[1:]]
    assert sorted(shown_ids) == sorted(r.info.run_id for r in pair)
    by_id = {r.info.run_id: r for r in pair}
    names_row = page.locator("tr", has=page.locator("th", has_text=re.compile(r"^Run Name:$")))
    expect(names_row.locator("td")).to_have_text([by_id[i].info.run_name for i in shown_ids])
    params = _section(page, "Parameters")
    family_row = params.locator("tr", has=page.locator("th", has_text=re.compile(r"^family$")))
    expect(family_row.locator("td")).to_have_text(
        [by_id[i].data.params["family"] for i in shown_ids]
    )
    expect(_section(page, "Metrics").get_by_text("val_accuracy", exact=True)).to_be_visible()
    _screenshot(page, SCREENSHOTS / "compare.png")

    # The tune run's artifacts, read from mlartifacts/ through the UI.
    page.goto(
        f"{ui_process.url}/#/experiments/{exp_id}/runs/{parent.info.run_id}"
        "/artifacts/tuning/leaderboard.csv?workflowType=machine_learning"
    )
    expect(page.get_by_text("tuning/leaderboard.csv").first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(trials[0].info.run_id).first).to_be_visible()
    _screenshot(page, SCREENSHOTS / "artifacts.png")
    page.close()

    assert ui_process.interrupt() == 0
    assert "Traceback" not in ui_process.err.read_text()


def test_the_store_uri_goes_to_the_server_in_its_environment_not_its_command_line():
    uri = "postgresql://alice:s3cret@db.example/mlflow"
    command = ui.server_command(uri, "127.0.0.1", 5000)
    assert not any("s3cret" in part for part in command)  # `ps` shows a command line
    assert ui.store_env(uri) == {
        "MLFLOW_BACKEND_STORE_URI": uri,
        "MLFLOW_REGISTRY_STORE_URI": uri,
    }
