#!/usr/bin/env bash
# The experiment grid as N processes on one host, then one table of every finished run.
#
#   launch/grid_shards.sh N --config=configs/grid_shared.py --workdir=DIR [more flags]
#
# Shard i runs planned runs i, i+N, ... (config.experiment.shard_index / num_shards) into the same DIR,
# with its own log (DIR/logs/shard<i>.log) and its own XLA compile cache. With several GPUs, shard i gets
# GPU i mod #GPUs. This is for several devices or hosts: one shard per device. To fill ONE accelerator,
# run the grid in one process (python -m recg_jax.experiments ...): its runs that differ only in seeds,
# alpha or the L_gen switches train together as one program over stacked parameters
# (config.experiment.member_group_size), and later runs reuse the programs of earlier ones. Several
# processes on one GPU each compile their own programs on the host CPUs (measured on one H200 with 16 CPU
# cores: 14 shards spent their first 5 minutes compiling and one hit a compiler error).
# Environment: MEM_FRACTION (GPU memory share per process; default 0.9/N), DEADLINE_S (stop the shards
# after this many seconds, with SIGINT; unfinished runs resume from their checkpoints next time).
set -uo pipefail
n="${1:?usage: launch/grid_shards.sh N --config=... --workdir=DIR [flags]}"
shift
workdir=""
for a in "$@"; do
  case "$a" in --workdir=*) workdir="${a#--workdir=}" ;; esac
done
[[ -n "$workdir" ]] || { echo "launch/grid_shards.sh: give --workdir=DIR" >&2; exit 2; }
mkdir -p "$workdir/logs"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
export XLA_PYTHON_CLIENT_MEM_FRACTION="${MEM_FRACTION:-$(python3 -c "print(round(0.9 / $n, 3))")}"
stop=()
[[ -n "${DEADLINE_S:-}" ]] && stop=(timeout --signal=INT --kill-after=20 "$DEADLINE_S")
# Data and embeddings first, once (this invocation trains nothing), so the shards only read the caches.
python -m recg_jax.experiments "$@" --aggregate_only --plots=false >"$workdir/logs/prepare.log" 2>&1 ||
  { echo "preparing data and embeddings failed: $workdir/logs/prepare.log" >&2; exit 1; }
pids=()
for ((i = 0; i < n; i++)); do
  (
    [[ "$gpus" -gt 1 ]] && export CUDA_VISIBLE_DEVICES=$((i % gpus))
    export JAX_COMPILATION_CACHE_DIR="$workdir/cache/xla-shard$i"
    exec "${stop[@]}" python -m recg_jax.experiments "$@" --plots=false \
      --config.experiment.num_shards="$n" --config.experiment.shard_index="$i"
  ) >"$workdir/logs/shard$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "shard $i stopped early or had failed runs: $workdir/logs/shard$i.log"; }
done
python -m recg_jax.experiments "$@" --aggregate_only
exit $status
