"""bench/ensemble.py: a whole tiny run prints the single model and each member's average."""

import json
import re

import pytest

from tests.bench_helpers import load_bench

ensemble_bench = load_bench("ensemble")


@pytest.mark.integration
def test_a_tiny_run_compares_an_ensemble_with_one_model(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result.json"
    argv = ["--workdir", str(tmp_path / "w"), "--dataset", "digits", "--members", "2"]
    argv += ["--epochs", "1", "--augment", "both", "--json", str(out)]
    assert ensemble_bench.main(argv) == 0
    printed = capfd.readouterr().out
    assert "2 x 1 epochs unaugmented, averaged: test" in printed
    assert "2 x 1 epochs augmented, averaged: test" in printed
    assert "one model of 2 epochs" in printed
    result = json.loads(out.read_text())
    # By default the 16-filter CNN (cpu.yaml's second seed), which the README's figures use.
    assert result["configuration"]["family"] == "simple_cnn"
    assert result["configuration"]["filters"] == 16
    rows = result["rows"]
    assert [r["training"] for r in rows] == [
        "one model",
        "member 1",
        "member 2",
        "member 1 aug",
        "member 2 aug",
    ]
    assert rows[0]["epochs"] == 2 and rows[1]["epochs"] == 1
    assert all(0 <= r["test"] <= 1 and r["s_per_epoch"] > 0 for r in rows)
    # Each set averages its own members only.
    assert rows[1]["avg_test"] == rows[1]["test"] and rows[3]["avg_test"] == rows[3]["test"]


def test_a_configuration_index_past_the_seeds_is_a_clear_error(tmp_path):
    message = "--config 9: search_spaces/cpu.yaml has 5 seeds; give an index from 0 to 4"
    with pytest.raises(SystemExit, match=re.escape(message)):
        ensemble_bench.main(["--workdir", str(tmp_path / "w"), "--config", "9"])
