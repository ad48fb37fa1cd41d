#!/usr/bin/env bash
# make run's DAG on a slower machine: `dvc repro` of a fresh clone of this checkout's HEAD
# inside a cgroup whose CPU quota is a fraction of this machine (Linux, run as root).
#
#   sudo bash bench/cpu_quota.sh [FRACTION] [WORKDIR]
#
# FRACTION (default 0.25): the share of all this machine's cores the run may use; 0.25 on
# a 2-core VM is half a CPU, a machine about 4 times slower (compare the epoch times in
# its log with an uncapped run's). WORKDIR (default /tmp/cpu_quota): the clone and its log.
# Uses this checkout's .venv (`make venv` first). Prints the wall time; the budget's plan
# and what was spent are in WORKDIR/repo/reports/budget.json, the test accuracy in
# WORKDIR/repo/reports/metrics.json. A benchmark, not a test: nothing is asserted.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fraction="${1:-0.25}"
work="${2:-/tmp/cpu_quota}"
[ "$(id -u)" = 0 ] || { echo "cpu_quota.sh: run as root (it creates a cgroup)" >&2; exit 2; }
[ -x "$root/.venv/bin/dvc" ] || { echo "cpu_quota.sh: no $root/.venv: run 'make venv' first" >&2; exit 2; }
period=100000
quota=$(python3 -c "import os,sys; print(int(float(sys.argv[1]) * os.cpu_count() * $period))" "$fraction")
[ "$quota" -ge 1000 ] || { echo "cpu_quota.sh: FRACTION $fraction is too small" >&2; exit 2; }

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then  # cgroup v2
  group=/sys/fs/cgroup/cpu_quota_bench
  mkdir -p "$group"
  echo "$quota $period" >"$group/cpu.max"
else  # cgroup v1
  group=/sys/fs/cgroup/cpu/cpu_quota_bench
  mkdir -p "$group"
  echo "$period" >"$group/cpu.cfs_period_us"
  echo "$quota" >"$group/cpu.cfs_quota_us"
fi

rm -rf "$work" && mkdir -p "$work"
git clone -q "$root" "$work/repo"
cd "$work/repo"
echo "cpu_quota.sh: $(git log --oneline -1); quota $quota of ${period} us per period" \
  "($fraction of $(nproc) cores); log in $work/run.log"
start=$(date +%s)
# The shell moves itself into the group, then becomes dvc: every stage inherits the quota.
sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$group" \
  env PATH="$root/.venv/bin:$PATH" dvc repro >"$work/run.log" 2>&1
echo "cpu_quota.sh: dvc repro took $(($(date +%s) - start)) s"
python3 -c "import json; b = json.load(open('reports/budget.json')); m = json.load(open('reports/metrics.json')); print(f\"tune + train {b['total_seconds']:.0f} s of {b['minutes'] * 60 - b['reserve_minutes'] * 60:.0f}; within_budget {b['within_budget']}; test accuracy {m['accuracy']:.4f}\")"
