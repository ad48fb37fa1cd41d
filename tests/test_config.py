"""params.yaml validation: bad values stop the run with one line and exit code 2."""

import subprocess
import sys

import pytest

from pipeline.config import load_params
from pipeline.errors import ConfigError
from tests.conftest import ROOT, run_cli


def _error_for(tmp_path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_defaults_load_and_match_the_shipped_params_file():
    params = load_params(ROOT / "params.yaml")
    assert params.data.dataset == "fashion_mnist"
    assert params.preprocess.val_fraction == 0.1
    assert (ROOT / params.tune.search_space).is_file()
    assert params.budget.mode == "time"  # `make run` on a CPU must end on time


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    msg = _error_for(tmp_path, "preprocess:\n  val_fracton: 0.2\n")
    assert "preprocess.val_fracton: unknown key" in msg
    assert "did you mean 'val_fraction'" in msg
    assert "test_fraction" in msg  # lists what is accepted


def test_unknown_section_is_named(tmp_path):
    msg = _error_for(tmp_path, "tuning:\n  seed: 1\n")
    assert "tuning: unknown key" in msg


def test_wrong_type_names_key_given_and_expected(tmp_path):
    msg = _error_for(tmp_path, "data:\n  retries: three\n")
    assert "data.retries: got 'three', expected a valid integer" in msg


def test_string_number_is_not_silently_coerced(tmp_path):
    msg = _error_for(tmp_path, "preprocess:\n  seed: '7'\n")
    assert "preprocess.seed: got '7'" in msg


def test_out_of_range_value(tmp_path):
    msg = _error_for(tmp_path, "preprocess:\n  val_fraction: 1.5\n")
    assert "preprocess.val_fraction: got 1.5, expected less than 1" in msg


def test_a_search_seed_of_0_is_refused_because_keras_tuner_would_draw_a_random_one(tmp_path):
    msg = _error_for(tmp_path, "tune:\n  seed: 0\n")
    assert "tune.seed: got 0, expected greater than or equal to 1" in msg


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    msg = _error_for(tmp_path, "data:\n  dataset: imagenet\n")
    assert "data.dataset: got 'imagenet'" in msg and "'cifar10'" in msg


def test_image_folder_is_never_null_because_dvc_yaml_depends_on_it(tmp_path):
    # dvc.yaml lists ${data.image_folder} as a dependency of download.
    msg = _error_for(tmp_path, "data:\n  dataset: image_folder\n  image_folder: null\n")
    assert "data.image_folder: got None, expected a valid string" in msg


def test_bad_image_size(tmp_path):
    msg = _error_for(tmp_path, "preprocess:\n  image_size: [4, 300000]\n")
    assert "preprocess.image_size: got [4, 300000]" in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    msg = _error_for(tmp_path, "data:\n  dataset: [digits\n")
    assert "invalid YAML: line 3, column 1" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_stops_before_any_work_with_exit_code_2(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  dataset: digits\n  retires: 2\n")
    result = run_cli("download", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert "data.retires: unknown key (did you mean 'retries'?)" in result.stderr
    assert not (tmp_path / "data").exists()


def test_help_lists_stages_and_their_params(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for text in ("download", "preprocess", "data.mirror_dir", "preprocess.val_fraction"):
        assert text in top.stdout
    stage = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess", "--help"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert stage.returncode == 0
    assert "preprocess.color_mode" in stage.stdout and "data.dataset" in stage.stdout
    assert "data.retries" not in stage.stdout  # preprocess does not read it


def test_unknown_stage_is_a_usage_error(tmp_path):
    result = run_cli("trian", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown stage 'trian'" in result.stderr


def test_duplicate_key_is_an_error_and_exponents_are_numbers(tmp_path):
    msg = _error_for(tmp_path, "preprocess:\n  seed: 1\n  seed: 2\n")
    assert "duplicate key 'seed'" in msg
    path = tmp_path / "ok.yaml"
    path.write_text("preprocess:\n  val_fraction: 2e-1\n")
    assert load_params(path).preprocess.val_fraction == 0.2


def test_mirror_url_needs_a_scheme(tmp_path):
    msg = _error_for(tmp_path, "data:\n  mirror_url: example.com/datasets\n")
    assert "data.mirror_url: got 'example.com/datasets'" in msg and "http://" in msg


def test_unreadable_params_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path)  # a folder, not a file
    (tmp_path / "latin1.yaml").write_bytes("data:\n  dataset: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_params(tmp_path / "latin1.yaml")


def test_the_old_search_budget_key_says_where_it_moved(tmp_path):
    msg = _error_for(tmp_path, "tune:\n  time_budget_minutes: 7\n")
    assert "tune.time_budget_minutes: replaced by the run's one budget, budget.minutes" in msg


def test_budget_section_is_checked(tmp_path):
    assert "budget.mode: got 'steps', expected 'time' or 'epochs'" in _error_for(
        tmp_path, "budget:\n  mode: steps\n"
    )
    assert "budget.search_share" in _error_for(tmp_path, "budget:\n  search_share: 1.5\n")
    msg = _error_for(tmp_path, "budget:\n  minutes: 1\n  reserve_minutes: 1\n")
    assert "budget.reserve_minutes: 1.0 leaves nothing of minutes 1.0" in msg
