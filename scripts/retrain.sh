#!/usr/bin/env bash
# Retraining, as .github/workflows/retrain.yml runs it and the same on a laptop
# (`make retrain` creates .venv if missing and puts its bin/ on PATH):
#   1. dvc pull    when a DVC remote is configured
#   2. dvc repro   reruns what changed; its register stage is the promotion gate
#   3. the gate    reads reports/registry.json and prints the decision in one line
#   4. dvc push    when a DVC remote is configured
#   5. reports/retrain_summary.md: the pull request's body; appended to $GITHUB_STEP_SUMMARY
#      and the decision written to $GITHUB_OUTPUT when those are set (GitHub Actions).
# Arguments go to `dvc repro` (e.g. `bash scripts/retrain.sh -f train`).
#
# Exit status: 0 when the pipeline ran, whether or not the candidate was promoted (a model
# that is not better is an answer, not a failure); 1 when a step failed or
# reports/registry.json is missing or invalid; 2 when the environment is not set up.
set -euo pipefail

REGISTRY=reports/registry.json
METRICS=reports/metrics.json
SUMMARY=reports/retrain_summary.md

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$1" >&2
  exit "${2:-1}"
}

cd "$(dirname "$0")/.."

command -v dvc >/dev/null ||
  die "dvc not found on PATH; run \`make retrain\`, which creates .venv and puts it on PATH" 2
command -v python >/dev/null ||
  die "python not found on PATH; run \`make retrain\`, which puts .venv/bin on PATH" 2
command -v git >/dev/null || die "git not found on PATH; install git" 2
git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  die "$PWD is not a git work tree; run retrain in a clone of the project" 2
if [ ! -f dvc.yaml ] || [ ! -d .dvc ]; then
  die "$PWD has no dvc.yaml or no .dvc/; run retrain in the project's root (after \`dvc init\`)" 2
fi

# GitHub passes a secret that is not set as an empty string: empty means "not configured".
for var in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD \
  MLFLOW_TRACKING_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  if [ -z "${!var:-}" ]; then unset "$var"; fi
done

remotes=$(dvc remote list) || die "\`dvc remote list\` failed; is .dvc/config valid?"
remote=""
if [ -n "$remotes" ]; then
  # Without a default, `dvc remote default` prints "No default remote set" and exits 1.
  remote=$(dvc remote default 2>/dev/null) || remote=""
  [ -n "$remote" ] ||
    die "DVC remotes are configured but none is the default; run \`dvc remote default NAME\`" 2
fi

if [ -n "$remote" ] && [ ! -f dvc.lock ]; then
  step "dvc pull: skipped, no dvc.lock yet (the first run builds everything)"
elif [ -n "$remote" ]; then
  # --allow-missing: a new remote, or one that a failed run never reached, lacks some
  # outputs; dvc repro then rebuilds those. An unreachable remote still fails here.
  step "dvc pull --allow-missing (remote '$remote')"
  dvc pull --allow-missing || die "dvc pull from remote '$remote' failed (see above)"
else
  step "dvc pull: skipped, no DVC remote configured (\`dvc remote add -d NAME URL\` sets one)"
fi

step "dvc repro${*:+ $*}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
dvc repro "$@" | tee "$log" || die "dvc repro failed (see above); nothing pushed"
stages=$(sed -n "s/^Running stage '\([^']*\)'.*/\1/p" "$log" | paste -sd ' ' -)

step "promotion gate ($REGISTRY)"
python - "$REGISTRY" "$METRICS" "$SUMMARY" "$stages" <<'PY'
"""Check the register stage's decision, print it in one line, write the markdown summary."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

registry_path, metrics_path, summary_path, stages = sys.argv[1:5]


def fmt(value, otherwise=""):
    return f"{value:.4f}" if isinstance(value, int | float) else otherwise


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


try:
    with open(registry_path) as fh:
        record = json.load(fh)
except FileNotFoundError:
    fail(f"{registry_path}: missing after dvc repro; the register stage (the gate) did not run")
except (OSError, ValueError) as exc:
    fail(f"{registry_path}: not valid JSON ({exc})")
record = record if isinstance(record, dict) else {}
decision = record.get("decision")
candidate = record.get("candidate") if isinstance(record.get("candidate"), dict) else {}
# Accuracies on the gate split, the one the register stage decides on (not the test split).
accuracy = candidate.get("gate_accuracy")
if decision not in ("champion", "challenger") or not isinstance(accuracy, int | float):
    fail(
        f"{registry_path}: invalid: expected 'decision' champion or challenger and a numeric "
        f"'candidate.gate_accuracy', got {decision!r} and {accuracy!r}"
    )
# The register stage wrote registry.json in this run only if it ran: otherwise the file is
# the last run's decision, and this run promoted nothing.
ran = "register" in stages.split()
name, version = record.get("model_name", "?"), candidate.get("version", "?")
before = record.get("champion_before") or {}
# Register reran on a model that already is the champion (e.g. outputs pulled on a new
# machine): nothing was promoted.
kept = decision == "champion" and str(before.get("version")) == str(version)
promoted = ran and decision == "champion" and not kept
if before.get("gate_accuracy") is not None:
    champion = f"v{before.get('version')} {before['gate_accuracy']:.4f}"
elif before:
    champion = f"v{before.get('version')} (not comparable)"
else:
    champion = "none"
if ran and kept:
    print(f"gate: kept: {name} v{version} is already @champion (gate accuracy {accuracy:.4f})")
elif ran:
    verdict = "promoted" if promoted else "not promoted"
    print(
        f"gate: {verdict}: {name} v{version} -> @{decision}; candidate {accuracy:.4f}, "
        f"champion before {champion}: {record.get('reason')}"
    )
else:
    print(
        f"gate: unchanged: register did not rerun (nothing it depends on changed); "
        f"last decision: {name} v{version} -> @{decision}, gate accuracy {accuracy:.4f}"
    )

try:
    with open(metrics_path) as fh:
        metrics = json.load(fh)
except (OSError, ValueError):
    metrics = {}
scalars = ", ".join(
    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
    for k, v in metrics.items()
    if isinstance(v, int | float) and not isinstance(v, bool)
)
commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
).stdout.strip()
if not ran or kept:
    headline = f"nothing to retrain: {name} v{version} is still @{decision}"
elif promoted:
    headline = f"{name} v{version} promoted to @champion"
else:
    headline = f"{name} v{version} not promoted (@challenger)"
lines = [
    f"## Retraining: {headline}",
    "",
    f"Gate: {record.get('reason')}",
    "",
    "| | version | gate accuracy | test accuracy |",
    "| --- | --- | --- | --- |",
    f"| candidate | v{version} | {accuracy:.4f} | {fmt(candidate.get('test_accuracy'))} |",
]
if before:
    shown = fmt(before.get("gate_accuracy"), "not comparable")
    lines.append(f"| champion before | v{before.get('version')} | {shown} | |")
lines += [
    "",
    "- stages run: " + (", ".join(f"`{s}`" for s in stages.split()) or "none (nothing changed)"),
    f"- metrics (`{metrics_path}`): {scalars or 'missing'}",
    f"- commit `{commit or '?'}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
]
os.makedirs(os.path.dirname(summary_path) or ".", exist_ok=True)
with open(summary_path, "w") as fh:
    fh.write("\n".join(lines) + "\n")
if os.environ.get("GITHUB_OUTPUT"):
    with open(os.environ["GITHUB_OUTPUT"], "a") as fh:
        shown = decision if ran and not kept else "unchanged"
        fh.write(f"decision={shown}\npromoted={str(promoted).lower()}\n")
PY

if [ -n "$remote" ]; then
  step "dvc push (remote '$remote')"
  dvc push || die "dvc push to remote '$remote' failed (see above)"
  echo "- DVC remote \`$remote\`: pulled before the run, pushed after it" >>"$SUMMARY"
else
  step "dvc push: skipped, no DVC remote configured"
  echo "- no DVC remote: the outputs in this dvc.lock are only in this machine's DVC cache" \
    >>"$SUMMARY"
fi

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  cat "$SUMMARY" >>"$GITHUB_STEP_SUMMARY"
fi
step "done: summary in $SUMMARY"
