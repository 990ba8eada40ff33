#!/usr/bin/env bash
# The experiment grid as N processes on one host, then one table of every finished run.
#
#   launch/grid_shards.sh [--dry-run] N --config=configs/grid_shared.py --workdir=DIR [more flags]
#
# Shard i runs planned runs i, i+N, ... (config.experiment.shard_index / num_shards) into the same DIR,
# with its own log (DIR/logs/shard<i>.log) and its own XLA compile cache. With several GPUs, shard i gets
# GPU i mod #GPUs. This is for several devices or hosts: one shard per device. To fill ONE accelerator,
# run the grid in one process (python -m recg_jax.experiments ...): its runs that differ only in seeds,
# alpha or the L_gen switches train together as one program over stacked parameters
# (config.experiment.member_group_size), and later runs reuse the programs of earlier ones. Several
# processes on one GPU each compile their own programs on the host CPUs (measured on one H200 with 16 CPU
# cores: 14 shards spent their first 5 minutes compiling and one hit a compiler error).
# --dry-run prints the commands (with their log redirections) instead of running them.
# Environment: MEM_FRACTION (GPU memory share per process; default 0.9/N), DEADLINE_S (stop the shards
# after this many seconds, with SIGINT; unfinished runs resume from their checkpoints next time).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch::parse "$@"
set -- "${LAUNCH_ARGS[@]}"
n="${1:?usage: launch/grid_shards.sh [--dry-run] N --config=... --workdir=DIR [flags]}"
shift
workdir=""
for a in "$@"; do
  case "$a" in --workdir=*) workdir="${a#--workdir=}" ;; esac
done
[[ -n "$workdir" ]] || { echo "launch/grid_shards.sh: give --workdir=DIR" >&2; exit 2; }

# Runs a command with its output in log file $1 (in the background when $2 is "&"), or prints it.
logged() {
  local log=$1 background=$2
  shift 2
  if ((LAUNCH_DRY_RUN)); then
    echo "$(launch::quote "$@") >$(launch::quote "$log") 2>&1${background:+ &}"
  elif [[ -n "$background" ]]; then
    "$@" >"$log" 2>&1 &
  else
    "$@" >"$log" 2>&1
  fi
}

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
# N processes may share a GPU: each preallocates its share of the memory instead of XLA's default 75%,
# which would leave the next process on that GPU nothing.
launch::setenv XLA_PYTHON_CLIENT_MEM_FRACTION "${MEM_FRACTION:-$(python3 -c "print(round(0.9 / $n, 3))")}"
launch::run mkdir -p "$workdir/logs"
stop=()
[[ -n "${DEADLINE_S:-}" ]] && stop=(timeout --signal=INT --kill-after=20 "$DEADLINE_S")
# Data and embeddings first, once (this invocation trains nothing), so the shards only read the caches.
logged "$workdir/logs/prepare.log" "" python -m recg_jax.experiments "$@" --aggregate_only --plots=false ||
  { echo "preparing data and embeddings failed: $workdir/logs/prepare.log" >&2; exit 1; }
pids=()
for ((i = 0; i < n; i++)); do
  shard=(env)
  [[ "$gpus" -gt 1 ]] && shard+=(CUDA_VISIBLE_DEVICES=$((i % gpus)))
  shard+=(JAX_COMPILATION_CACHE_DIR="$workdir/cache/xla-shard$i" "${stop[@]}" python -m recg_jax.experiments
          "$@" --plots=false --config.experiment.num_shards="$n" --config.experiment.shard_index="$i")
  logged "$workdir/logs/shard$i.log" "&" "${shard[@]}"
  ((LAUNCH_DRY_RUN)) || pids+=($!)
done
if ((LAUNCH_DRY_RUN)); then
  launch::run wait
  launch::run python -m recg_jax.experiments "$@" --aggregate_only
  exit 0
fi
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "shard $i stopped early or had failed runs: $workdir/logs/shard$i.log"; }
done
python -m recg_jax.experiments "$@" --aggregate_only
exit $status
