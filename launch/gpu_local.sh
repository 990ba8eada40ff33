#!/usr/bin/env bash
# recg-jax on one machine with one or more GPUs: one process that sees every local GPU (the train step is
# data-parallel over them), so no --distributed.
#
#   WORKDIR=runs/paper launch/gpu_local.sh [--dry-run] --config=configs/paper.py [flags for recg_jax.main]
#
# --dry-run prints the environment and the command instead of running it. Every argument after the
# script's own flags goes to `python -m recg_jax.main` unchanged. Run it from the repository root, with
# requirements-cuda.txt installed. Environment: WORKDIR (required: the run's folder, or a bucket such as
# gs://bucket/run); PYTHON (default python); CUDA_VISIBLE_DEVICES to use fewer GPUs; JAX_PLATFORMS,
# XLA_PYTHON_CLIENT_MEM_FRACTION, XLA_FLAGS, NCCL_DEBUG override what launch/common.sh sets and says why.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch::parse "$@"
launch::require WORKDIR "the run's folder or bucket, e.g. WORKDIR=runs/paper"
launch::refuse_arg --workdir "set WORKDIR instead"
launch::gpu_env
launch::run "${PYTHON:-python}" -m recg_jax.main --workdir="${WORKDIR}" "${LAUNCH_ARGS[@]}"
