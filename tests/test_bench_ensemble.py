"""bench/ensemble.py: a whole tiny run prints the single model and each member's average."""

import json

from tests.bench_helpers import load_bench

ensemble_bench = load_bench("ensemble")


def test_a_tiny_run_compares_an_ensemble_with_one_model(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result.json"
    argv = ["--workdir", str(tmp_path / "w"), "--dataset", "digits", "--members", "2"]
    assert ensemble_bench.main([*argv, "--epochs", "1", "--json", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "2 x 1 epochs averaged: test" in printed and "one model of 2 epochs" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["training"] for r in rows] == ["one model", "member 1", "member 2"]
    assert rows[0]["epochs"] == 2 and rows[1]["epochs"] == 1
    assert all(0 <= r["test"] <= 1 and r["s_per_epoch"] > 0 for r in rows)
    assert rows[1]["avg_test"] == rows[1]["test"] and "avg_test" in rows[2]
