"""`python -m pipeline <stage> --help`: the params a stage reads, with the values in force."""

import pytest
import yaml

from pipeline.cli import stage_parser
from pipeline.config import TuneParams
from tests.conftest import ROOT, run_cli


def _help(stage: str, *args: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        stage_parser(stage).parse_args(list(args))
    assert done.value.code == 0
    return capsys.readouterr().out


def _line(text: str, key: str) -> str:
    [line] = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(f"{key} = ")]
    return line


def test_help_shows_the_values_of_the_params_file_and_where_each_comes_from(tmp_path, capsys):
    params = tmp_path / "my_params.yaml"
    params.write_text("tune:\n  max_trials: 40\n  seed: 42\n")
    default_trials = TuneParams.model_fields["max_trials"].default
    assert default_trials != 40

    # --help before --params: the file is still the one the stage would read.
    out = _help("tune", "--help", "--params", str(params), capsys=capsys)

    assert f"as {params} sets them:" in out
    assert _line(out, "tune.max_trials").startswith(
        f"tune.max_trials = 40 ({params}; default {default_trials}): "
    )
    assert _line(out, "tune.seed").startswith(f"tune.seed = 42 ({params}): ")  # same as default
    assert _line(out, "tune.algorithm").startswith("tune.algorithm = hyperband (default): ")
    assert _line(out, "budget.search_share").startswith("budget.search_share = 0.5 (default): ")
    # tune does not read train.* (budget.mode's help names train.epochs, a key of train's)
    assert not any(line.strip().startswith("train.") for line in out.splitlines())


def test_help_without_a_params_file_shows_the_defaults_and_says_so(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    out = _help("train", "--params", str(missing), "-h", capsys=capsys)
    assert "at the schema's defaults:" in out and f"({missing} not found)" in out
    assert _line(out, "train.epochs").startswith("train.epochs = 20 (default): ")


def test_help_with_an_invalid_params_file_names_the_problem(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("tune:\n  max_trails: 3\n")
    out = _help("tune", "--params", str(bad), "--help", capsys=capsys)
    assert "at the schema's defaults:" in out
    assert "tune.max_trails: unknown key (did you mean 'max_trials'?)" in out
    default_trials = TuneParams.model_fields["max_trials"].default
    assert _line(out, "tune.max_trials").startswith(f"tune.max_trials = {default_trials} (default)")


def test_cli_help_reads_params_yaml_of_the_current_directory(tmp_path):
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tune": shipped["tune"]}))

    stage = run_cli("tune", "--help", cwd=tmp_path)
    top = run_cli("--help", cwd=tmp_path)

    assert stage.returncode == 0 and top.returncode == 0
    for out in (stage.stdout, top.stdout):
        assert "as params.yaml sets them:" in out
        assert f"tune.max_trials = {shipped['tune']['max_trials']} (params.yaml" in out
        assert f"tune.search_space = {shipped['tune']['search_space']} (params.yaml" in out
