#!/usr/bin/env bash
# Runs recg-jax on every host of a Cloud TPU pod slice: one process per host, joined by jax.distributed.
#
#   TPU_NAME=my-v5e-32 ZONE=us-central2-b WORKDIR=gs://bucket/run1 \
#     launch/tpu_pod.sh --config=configs/paper.py
#
# The repository must already be on every host (e.g. `gcloud compute tpus tpu-vm scp` or a git clone),
# with `pip install -r requirements.txt "jax[tpu]"` done there.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO_DIR="${REPO_DIR:-~/recg-jax}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && python -m recg_jax.main --distributed --workdir=$WORKDIR $*"
