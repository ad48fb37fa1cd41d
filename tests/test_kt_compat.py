"""Keras Tuner's internals stay behind pipeline/tuning/kt_compat.py, which refuses a
keras-tuner version its patches were not written for."""

import importlib.metadata
import importlib.util
import re

import pytest

from pipeline.errors import PipelineError
from tests.tune_helpers import ROOT

COMPAT = ROOT / "pipeline" / "tuning" / "kt_compat.py"
UNSUPPORTED = (
    "keras-tuner 1.4.9 is installed; pipeline/tuning/kt_compat.py supports 1.4.7-1.4.8 "
    "only: pip install keras-tuner==1.4.8"
)


def _modules_besides_compat():
    return [p for p in sorted((ROOT / "pipeline").rglob("*.py")) if p != COMPAT]


def test_an_unsupported_version_is_refused_with_one_line(monkeypatch):
    from pipeline.tuning import kt_compat

    monkeypatch.setattr(kt_compat, "installed_version", lambda: "1.4.9")
    with pytest.raises(PipelineError) as excinfo:
        kt_compat.check_version()
    assert str(excinfo.value) == UNSUPPORTED


def test_missing_keras_tuner_is_named(monkeypatch):
    from pipeline.tuning import kt_compat

    monkeypatch.setattr(kt_compat, "installed_version", lambda: None)
    with pytest.raises(PipelineError, match=r"^no keras-tuner is installed; .*==1\.4\.8$"):
        kt_compat.check_version()


def test_importing_kt_compat_checks_the_version_first(monkeypatch):
    """The check runs at import, before any of Keras Tuner's internals are imported."""
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "1.4.9" if name == "keras-tuner" else real(name),
    )
    spec = importlib.util.spec_from_file_location("kt_compat_under_test", COMPAT)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(PipelineError) as excinfo:
        spec.loader.exec_module(module)
    assert str(excinfo.value) == UNSUPPORTED
    assert not hasattr(module, "OracleCompat")  # stopped before the patches were defined


def test_the_installed_keras_tuner_is_supported():
    from pipeline.tuning import kt_compat

    assert kt_compat.installed_version() in kt_compat.SUPPORTED_VERSIONS
    kt_compat.check_version()  # raises PipelineError otherwise


def test_only_kt_compat_imports_keras_tuner_internals():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules_besides_compat()
        if "keras_tuner.src" in p.read_text()
    ]
    assert offenders == []
    assert "keras_tuner.src" in COMPAT.read_text()


def test_only_kt_compat_touches_keras_tuners_private_members():
    """No other module overrides or reads an underscored Keras Tuner method or attribute."""
    import keras_tuner

    classes = [
        keras_tuner.Tuner,
        keras_tuner.Hyperband,
        keras_tuner.RandomSearch,
        keras_tuner.BayesianOptimization,
        keras_tuner.GridSearch,
        *(getattr(keras_tuner.oracles, n) for n in dir(keras_tuner.oracles) if "Oracle" in n),
    ]
    names = {n for cls in classes for n in dir(cls)}
    oracle = keras_tuner.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=1)
    names |= set(vars(oracle))  # instance attributes: _run_times, _retry_queue, ...
    private = {n for n in names if n.startswith("_") and not n.startswith("__")}
    assert {"_build_and_fit_model", "_save_trial", "_run_times"} <= private
    pattern = re.compile(r"(?:\.|def )(" + "|".join(map(re.escape, private)) + r")\b")
    found = [
        f"{p.relative_to(ROOT)}: {m.group(1)}"
        for p in _modules_besides_compat()
        for m in pattern.finditer(p.read_text())
    ]
    assert found == []


def test_conditions_go_to_the_oracle_protocol_without_printing(capsys):
    from pipeline.tuning import kt_compat  # its patches apply on import

    conditions = kt_compat.kt_conditions

    for values in (["sgd"], [True], [3, 4], [0.5]):
        proto = conditions.Parent("parent", values).to_proto()
        assert proto.parent.name == "parent"
        assert len(proto.parent.values) == len(values)
        restored = conditions.Condition.from_proto(proto)
        assert restored.values == values
    assert capsys.readouterr().out == ""
