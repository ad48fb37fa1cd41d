"""Stage register: the trained model into the MLflow Model Registry, behind a promotion gate.

The candidate (``models/model.keras``) and the current ``@champion`` are both scored on the
gate split that preprocess holds out for this stage alone: the reported test accuracy is not
selected on it, and unlike val it did not pick the candidate's best epoch. No stored number
from another data version is trusted. The candidate becomes ``@champion`` only if it is
better by at least ``register.min_delta`` and McNemar's test on the paired predictions gives
p below ``register.significance`` (null: no test); otherwise it becomes ``@challenger``. The
first model is champion if it beats chance on the gate split (a permutation test at the same
significance), ``@challenger`` otherwise. The decision goes to ``reports/registry.json``.
Missing or NaN metrics register nothing.
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic, paths, runtime, tracking
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.data.balance import sample_weights
from pipeline.data.splits import load_meta, load_split
from pipeline.errors import DataError, PipelineError
from pipeline.fileio import read_json, sha256_of
from pipeline.registry import models
from pipeline.registry.gate import Decision, decide, first_model, score
from pipeline.registry.names import CHALLENGER, CHAMPION, SHA_TAG, model_name

GATE_SPLIT = "gate"


def read_metrics(path: Path = paths.METRICS) -> dict:
    """``reports/metrics.json`` with a finite ``accuracy``; DataError otherwise."""
    path = Path(path)
    metrics = read_json(
        path,
        "nothing registered",
        missing="run `python -m pipeline evaluate` first; nothing registered",
    )
    acc = metrics.get("accuracy") if isinstance(metrics, dict) else None
    if isinstance(acc, bool) or not isinstance(acc, int | float):
        raise DataError(f"{path}: no numeric 'accuracy' (got {acc!r}); nothing registered")
    if not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
        raise DataError(f"{path}: accuracy is {acc!r}, not a number in [0, 1]; nothing registered")
    return metrics


def read_model_info(path: Path = paths.MODEL_INFO) -> dict:
    """``models/model_info.json``; {} (with a warning) when the train stage left none."""
    info = read_json(path, "rerun the train stage", default=None)
    if info is None:
        log(f"register: warning: {path} missing; the model is logged in a new MLflow run")
        return {}
    return info


@dataclass(frozen=True)
class Candidate:
    """The trained model, checked against the prepared data and scored on the gate split."""

    info: dict  # model_info.json ({} when missing)
    class_names: list[str]
    x_gate: object  # the gate split (its images stream from disk)
    predicted: np.ndarray  # per gate image: the candidate's class
    gate_weights: np.ndarray | None  # per gate image: 1 / count(class) for skewed classes
    test_accuracy: float
    model_sha: str
    data_sha: str
    meta_file: Path

    @property
    def correct(self) -> np.ndarray:
        """Per gate image: whether the candidate is right."""
        return self.predicted == self.x_gate.y

    @property
    def gate_accuracy(self) -> float:
        """On the gate split; balanced accuracy when ``gate_weights`` is not None."""
        return score(self.correct, self.gate_weights)


def main(argv=None) -> int:
    """Score candidate and champion on the gate split, gate, register, write registry.json."""
    args = stage_parser("register").parse_args(argv)
    params = load_params(args.params)
    runtime.configure_environment()
    reg = params.register
    name = model_name(params)

    # Everything that can refuse the stage comes before MLflow is touched.
    cand = check_candidate()

    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    client, exp_id = tracking.open_experiment(uri, tracking.experiment_name(params))
    ensure_registered_model(client, name)
    champion = models.get_alias(client, name, CHAMPION)
    existing = same_model_version(client, name, cand.model_sha)
    champion_version = str(champion.version) if champion else None

    record = _registry_record(name, cand, existing, reg)
    decision, record["champion_before"] = judge(
        client, name, cand, champion_version, existing, reg.min_delta, reg.significance
    )
    if decision.mcnemar is not None:
        record["mcnemar"] = decision.mcnemar.as_dict()

    if existing is None:
        version, run_id = log_and_register(
            client, exp_id, name, cand.info, cand.meta_file, cand.class_names, cand.x_gate,
            cand.model_sha, cand.data_sha,
            {"gate": cand.gate_accuracy, "test": cand.test_accuracy}, decision,
        )  # fmt: skip
        record["candidate"].update(version=version, run_id=run_id)
    else:
        version = str(existing.version)
    alias = move_aliases(client, name, version, decision.promote, champion_version)
    record["decision"] = alias
    record["reason"] = decision.reason
    after = version if decision.promote else champion_version
    record["champion_after"] = {"version": after}
    atomic.write_json(paths.REGISTRY, record)
    promoted = decision.promote and champion_version != version
    verdict = "promoted" if promoted else "kept" if decision.promote else "not promoted"
    log(f"register: {name} version {version} -> @{alias}; {verdict}: {decision.reason}")
    return 0


def check_candidate() -> Candidate:
    """Read the metrics, model_info.json, the gate split and ``models/model.keras``, check
    that they agree (DataError otherwise), and score the model on the gate split: its
    accuracy, or its balanced accuracy when train weighted the classes
    (``model_info.json``'s ``class_balance``: ``imbalance.*`` on the training split)."""
    metrics = read_metrics()
    info = read_model_info()
    meta = load_meta()
    if GATE_SPLIT not in (meta.get("images") or {}):
        raise DataError(
            f"{paths.PROCESSED}: prepared before the promotion gate had its own split (no "
            f"{GATE_SPLIT} split in {paths.META_FILE}); rerun preprocess: `dvc repro` (preprocess "
            "params changed) or `python -m pipeline preprocess`"
        )
    x_gate = load_split(GATE_SPLIT)  # images stay on disk; scoring streams them
    class_names = [str(c) for c in meta["class_names"]]
    if info.get("class_names") is not None and list(info["class_names"]) != class_names:
        raise DataError(
            f"{paths.MODEL_INFO}: class names differ from {paths.PROCESSED}/meta.json; the "
            "model was trained on other data; rerun train and evaluate"
        )
    candidate = models.load_keras(paths.MODEL)
    shape = models.input_shape(candidate)
    if list(shape) != list(meta["input_shape"]):
        raise DataError(
            f"{paths.MODEL}: input shape {list(shape)} but the {GATE_SPLIT} split is "
            f"{meta['input_shape']}; rerun train and evaluate"
        )
    probs = models.predict_probs(candidate, x_gate, f"candidate {paths.MODEL}")
    if probs.shape[1] != len(class_names):
        raise DataError(
            f"{paths.MODEL}: {probs.shape[1]} outputs for {len(class_names)} classes; rerun train"
        )
    weights = None
    balance = info.get("class_balance") or {}
    if balance.get("class_weights"):  # train chose by balanced accuracy: so does the gate
        log(f"register: the gate compares balanced accuracies ({balance.get('reason')})")
        weights = sample_weights(x_gate.y, len(class_names))
    meta_file = paths.PROCESSED / paths.META_FILE
    return Candidate(
        info=info,
        class_names=class_names,
        x_gate=x_gate,
        predicted=probs.argmax(axis=1),
        gate_weights=weights,
        test_accuracy=float(metrics["accuracy"]),
        model_sha=sha256_of(paths.MODEL),
        data_sha=tracking.data_tags(meta_file)["data.sha256"],
        meta_file=meta_file,
    )


def _registry_record(name: str, cand: Candidate, existing, reg) -> dict:
    """``reports/registry.json`` before the decision: the candidate and the gate's settings."""
    return {
        "decision": None,
        "reason": None,
        "model_name": name,
        "candidate": {
            "version": str(existing.version) if existing else None,
            "gate_accuracy": cand.gate_accuracy,
            "test_accuracy": cand.test_accuracy,
            "model_sha256": cand.model_sha,
            "run_id": existing.run_id if existing else None,
            "new_version": existing is None,
        },
        "champion_before": None,
        "champion_after": None,
        "gate_split": GATE_SPLIT,
        "num_gate": int(len(cand.x_gate.y)),
        "min_delta": reg.min_delta,
        "significance": reg.significance,
        "mcnemar": None,
        "data_sha256": cand.data_sha,
    }


def judge(
    client,
    name: str,
    cand: Candidate,
    champion_version: str | None,
    existing,
    min_delta: float,
    significance: float | None,
) -> tuple[Decision, dict | None]:
    """The gate's decision for ``cand`` against the ``@champion`` (scored on the gate split
    here), and the champion's record (None when there is none)."""
    if champion_version is not None and existing is not None:
        if champion_version == str(existing.version):
            decision = Decision(
                True, f"this model is already {CHAMPION} (version {champion_version})"
            )
            return decision, {"version": champion_version, "gate_accuracy": cand.gate_accuracy}
    champ_correct, before = None, None
    y_gate = cand.x_gate.y
    if champion_version is not None:
        champ_acc, champ_correct, why_not = score_champion(
            client, name, champion_version, cand.x_gate, y_gate, cand.class_names
        )
        before = {"version": champion_version, "gate_accuracy": champ_acc}
        if champ_correct is None:
            return Decision(False, why_not), before
        before["gate_accuracy"] = score(champ_correct, cand.gate_weights)
    split = f"the {GATE_SPLIT} split ({len(y_gate)} images)"
    if champion_version is None:
        return first_model(y_gate, cand.predicted, significance, split), before
    decision = decide(
        cand.correct, champ_correct, min_delta, significance,
        f"{CHAMPION} v{champion_version}", split, weights=cand.gate_weights,
    )  # fmt: skip
    return decision, before


def move_aliases(client, name: str, version: str, promote: bool, champion_version) -> str:
    """Point ``@champion`` (promoted) or ``@challenger`` at ``version``, drop a stale
    ``@challenger`` from a new champion, tag the version with the decision; the alias."""
    alias = CHAMPION if promote else CHALLENGER
    if not (alias == CHAMPION and champion_version == version):
        client.set_registered_model_alias(name, alias, version)
    if alias == CHAMPION:
        current = models.get_alias(client, name, CHALLENGER)
        if current is not None and str(current.version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, version, "pipeline.decision", alias)
    return alias


def exported_files(model_sha: str) -> list[Path]:
    """The export stage's files made from this very model; [] (with a warning) otherwise.

    A format the export stage skipped (too big for that machine's memory) is absent.
    """
    files = [p for p in (paths.MODEL_ONNX, paths.MODEL_TFLITE) if p.is_file()]
    report = read_json(paths.EXPORT_REPORT, None) or {}
    if not files or report.get("model_sha256") != model_sha:
        log(
            f"register: warning: no file in {paths.EXPORT_DIR} exported from this "
            f"{paths.MODEL}; the version gets none (run `python -m pipeline export` first)"
        )
        return []
    return files


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name, description="image classifier registered by the cnn-automl pipeline"
            )
        except MlflowException as again:  # created meanwhile by another process
            if again.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def same_model_version(client, name: str, model_sha: str):
    """An earlier version of ``name`` made from this very model file, if any."""
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{quoted}'", max_results=10000)
    same = [v for v in versions if v.tags.get(SHA_TAG) == model_sha]
    return max(same, key=lambda v: int(v.version)) if same else None


def score_champion(client, name, version, x, y, class_names):
    """``(accuracy, correct mask, None)`` on ``x, y`` (the gate split), or
    ``(None, None, reason)`` if not comparable."""
    label = f"{CHAMPION} v{version}"
    keep = f"not comparable, so the {CHAMPION} is kept; move the alias by hand to replace it"
    with models.temp_dir("champion-") as tmp:
        local = models.download_version(client, name, version, Path(tmp))
        # A champion from before models took 0-255 pixels is scored behind the rescaling
        # it lacks, so a retrained candidate can still be compared with it.
        model = models.load_keras(local.model_file, old_convention="wrap")
        shape, want = models.input_shape(model), tuple(x.shape[1:])
        if shape != want:
            why = (
                f"{label} takes input {list(shape)}, the {GATE_SPLIT} split is {list(want)}: {keep}"
            )
            return None, None, why
        if local.class_names is not None and list(local.class_names) != class_names:
            why = f"{label} has classes {local.class_names}, the data {class_names}: {keep}"
            return None, None, why
        probs = models.predict_probs(model, x, label)
    correct = probs.argmax(axis=1) == y
    return float(correct.mean()), correct, None


def log_and_register(
    client, exp_id, name, info, meta_file, class_names, x, model_sha, data_sha, acc, decision
):
    """Log both model flavours to the train run (or a new register run); create a version.

    ``x``: images, the first two become the input example; ``acc``: the candidate's
    accuracy on the ``gate`` and ``test`` splits.
    """
    from mlflow.exceptions import MlflowException

    run_id, own_run = info.get("mlflow_run_id"), False
    if run_id:
        run = tracking.find_run(client, run_id)
        if run is None or run.info.lifecycle_stage != "active":
            run_id = None
    if not run_id:
        tags = {
            **tracking.process_tags("register"),
            **tracking.data_tags(meta_file),
            "git.commit": tracking.git_commit(),
        }
        run_id = client.create_run(exp_id, run_name="register", tags=tags).info.run_id
        own_run = True
    try:
        with tracking.closing_run(client, run_id, own_run):
            example = x[:2].astype(np.float32)
            exported = exported_files(model_sha)  # stored with the version's pyfunc model
            with models.temp_dir("register-") as tmp:
                pyfunc_dir, keras_dir = models.save_models(
                    paths.MODEL, class_names, example, Path(tmp), exported
                )
                client.log_artifacts(run_id, str(pyfunc_dir), models.PYFUNC_PATH)
                client.log_artifacts(run_id, str(keras_dir), models.KERAS_PATH)
            tracking.log_metrics(client, run_id, {"register_gate_accuracy": acc["gate"]})
            artifact_uri = client.get_run(run_id).info.artifact_uri
            tags = {
                SHA_TAG: model_sha,
                "data.sha256": data_sha,
                "test_accuracy": f"{acc['test']:.6f}",
                "gate_accuracy": f"{acc['gate']:.6f}",
                **{k: str(info[k]) for k in ("family", "preset", "source") if info.get(k)},
                "exported": ",".join(f.name for f in exported) or "none",
            }
            version = client.create_model_version(
                name,
                source=f"{artifact_uri.rstrip('/')}/{models.PYFUNC_PATH}",
                run_id=run_id,
                tags=tags,
                description=(
                    f"test accuracy {acc['test']:.4f}, gate accuracy {acc['gate']:.4f}; "
                    f"gate: {decision.reason}"
                ),
            ).version
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0][:300]
        raise PipelineError(f"MLflow: registering {name} failed: {first}") from None
    return str(version), run_id


if __name__ == "__main__":
    sys.exit(guarded(main))
