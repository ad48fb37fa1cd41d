#!/usr/bin/env bash
# Issue 13 section 6: the pipeline on a GPU under KERAS_BACKEND=jax, Fashion-MNIST, a 5-minute
# budget (bench/gpu/params.yaml). Made for the lent GPU machines, whose image has JAX with
# CUDA but no TensorFlow, no DVC and no network, so the stages run one by one and the
# packages they lack arrive as a site folder packed here by `bench/gpu/run.sh --pack`:
#
#   bash bench/gpu/run.sh --pack        # here: .gpu/site.tgz and .gpu/fashion-mnist/
#   bash bench/gpu/run.sh [OUT_DIR]     # there (carry .gpu): log, GPU samples, summary
#
# Writes to OUT_DIR (default $OUT, else reports/gpu): run.log (every stage's output, each line
# prefixed with seconds since the start), gpu.csv (nvidia-smi once a second), summary.json
# (test accuracy, epochs, mean GPU utilisation while tuning and training, time to the first
# finished epoch) and the reports the stages write.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ "${1:-}" == "--pack" ]]; then
    # The packages requirements-jax.lock pins that the GPU image lacks (KINDS.md's list), as
    # CPython 3.12 x86-64 wheels, installed into one folder; the MLflow UI's JavaScript
    # (27 MB, unused by the stages) is left out to stay under the 64 MiB a call carries.
    set -e
    py=${PYTHON:-.venv/bin/python}
    missing=$(grep -viE '^(absl-py|aiohappyeyeballs|aiohttp|aiosignal|annotated-doc|anyio|attrs|certifi|charset-normalizer|click|cloudpickle|contourpy|cycler|fonttools|frozenlist|grpcio|h11|h5py|idna|iniconfig|jax|jaxlib|jinja2|joblib|kiwisolver|markdown-it-py|markupsafe|matplotlib|mdurl|ml.dtypes|multidict|narwhals|numpy|opt.einsum|packaging|pandas|pillow|pluggy|propcache|protobuf|pyarrow|pygments|pyparsing|pytest|python-dateutil|pyyaml|requests|rich|scikit-learn|scipy|six|threadpoolctl|typing.extensions|urllib3|werkzeug|yarl|zipp)==' requirements-jax.lock)
    rm -rf .gpu/site .gpu/wheels && mkdir -p .gpu/fashion-mnist
    # shellcheck disable=SC2086  # one argument per pinned package
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels $missing
    "$py" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --target .gpu/site \
        .gpu/wheels/*.whl
    rm -rf .gpu/site/mlflow/server/js .gpu/wheels
    tar czf .gpu/site.tgz -C .gpu/site . && rm -rf .gpu/site
    cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
    du -sh .gpu/site.tgz .gpu/fashion-mnist
    exit 0
fi

out=${1:-${OUT:-reports/gpu}}
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [[ -f .gpu/site.tgz ]]; then
    mkdir -p /tmp/gpu-site && tar xzf .gpu/site.tgz -C /tmp/gpu-site
    export PYTHONPATH="/tmp/gpu-site:$PWD"
fi
py=${PYTHON:-python3}
start=$(date +%s.%N)
stamp() { "$py" -c 'import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t0:7.1f} {line}"); sys.stdout.flush()' "$start"; }

"$py" -c 'import jax, keras, keras_tuner, mlflow
print("jax", jax.__version__, jax.devices(), "keras", keras.__version__,
      "keras-tuner", keras_tuner.__version__, "mlflow", mlflow.__version__)' 2>&1 | stamp | tee "$out/run.log" || exit 1
grep -q "CudaDevice\|cuda" "$out/run.log" || echo "note: JAX sees no GPU" | tee -a "$out/run.log"

smi=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw \
        --format=csv,noheader,nounits -l 1 >"$out/gpu.csv" 2>/dev/null &
    smi=$!
fi
rm -rf data/raw data/processed models reports/tuning reports/budget.json mlflow.db
declare -A began ended
for stage in download preprocess tune train evaluate; do
    began[$stage]=$(date +%s.%N)
    echo "== $stage" | stamp | tee -a "$out/run.log"
    "$py" -m pipeline "$stage" --params bench/gpu/params.yaml 2>&1 | stamp | tee -a "$out/run.log"
    rc=${PIPESTATUS[0]}
    ended[$stage]=$(date +%s.%N)
    [[ $rc == 0 ]] || { echo "stage $stage failed ($rc)" | tee -a "$out/run.log"; break; }
done
[[ -n $smi ]] && kill "$smi"
# At most 8 files come back from a device call: these 7.
for f in reports/metrics.json reports/budget.json reports/tuning/leaderboard.csv \
    reports/tuning/best_hparams.json; do cp "$f" "$out/" 2>/dev/null; done

"$py" - "$out" "$start" "${began[tune]:-0}" "${ended[train]:-0}" <<'EOF'
import csv, json, sys
from pathlib import Path
out, start, t_tune, t_end = Path(sys.argv[1]), *map(float, sys.argv[2:])
summary = {}
metrics = out / "metrics.json"
if metrics.exists():
    summary["test_accuracy"] = json.loads(metrics.read_text())["accuracy"]
budget = out / "budget.json"
if budget.exists():
    summary["budget"] = json.loads(budget.read_text())
# First finished epoch: the earliest per-epoch metric any trial logged to MLflow, after tune began.
import sqlite3
if Path("mlflow.db").exists():
    with sqlite3.connect("mlflow.db") as db:
        (first,) = db.execute("SELECT MIN(timestamp) FROM metrics WHERE key = 'accuracy'").fetchone()
    if first:
        summary["first_epoch_s_after_tune_start"] = round(first / 1000 - t_tune, 1)
        if "budget" in summary:  # the budget clock starts once tune has imported Keras
            clock = summary["budget"]["started_at"]
            summary["first_epoch_s_after_budget_start"] = round(first / 1000 - clock, 1)
samples = []
if (out / "gpu.csv").exists():
    from datetime import datetime
    for row in csv.reader((out / "gpu.csv").open()):
        try:
            t = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(row[1]), float(row[2])))
        except (ValueError, IndexError):
            pass
busy = [u for t, u, _ in samples if t_tune <= t <= t_end]
if busy:
    summary["gpu_util_mean_pct_tune_train"] = round(sum(busy) / len(busy), 1)
    summary["gpu_util_samples"] = len(busy)
    summary["gpu_memory_max_mib"] = max(m for _, _, m in samples)
summary["tune_to_train_end_s"] = round(t_end - t_tune, 1)
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k != "budget"}, indent=2))
EOF
