# What the launch scripts share; sourced by them, never run alone.
#
# A script's own flags come first (--dry-run, and those it names in LAUNCH_OWN_FLAGS; `--` ends them);
# every argument after them goes to the Python entry point unchanged. With --dry-run a script prints the
# environment it sets (`export NAME=value` lines) and then each command it would run, one per line,
# quoted so that the lines can be pasted into a shell, and runs nothing.

LAUNCH_NAME="launch/$(basename "${BASH_SOURCE[1]:-$0}")"
LAUNCH_DRY_RUN=0
LAUNCH_OWN_FLAGS=()
LAUNCH_SEEN=()  # own flags given, besides --dry-run
LAUNCH_ARGS=()  # the arguments for the entry point
LAUNCH_ENV=()  # names of the variables the script exported, printed by a dry run
LAUNCH_ENV_PRINTED=0

# Splits "$@" into the script's own leading flags and LAUNCH_ARGS.
launch::parse() {
  while (($#)); do
    case "$1" in
      --dry-run) LAUNCH_DRY_RUN=1 ;;
      --) shift; break ;;
      *)
        if [[ " ${LAUNCH_OWN_FLAGS[*]} " == *" $1 "* ]]; then LAUNCH_SEEN+=("$1"); else break; fi ;;
    esac
    shift
  done
  LAUNCH_ARGS=("$@")
}

# True when own flag $1 was given.
launch::given() {
  [[ " ${LAUNCH_SEEN[*]} " == *" $1 "* ]]
}

# Stops with status 2 unless variable $1 is set and not empty; $2 says what it holds.
launch::require() {
  if [[ -z "${!1:-}" ]]; then
    echo "${LAUNCH_NAME}: set $1 ($2)" >&2
    exit 2
  fi
}

# Stops with status 2 if an argument for the entry point starts with $1; $2 says what to do instead.
launch::refuse_arg() {
  local arg
  for arg in "${LAUNCH_ARGS[@]}"; do
    if [[ "$arg" == "$1"* ]]; then
      echo "${LAUNCH_NAME}: do not pass $1 ($2)" >&2
      exit 2
    fi
  done
}

# Exports $1=$2 and remembers the name for a dry run.
launch::setenv() {
  export "$1=$2"
  LAUNCH_ENV+=("$1")
}

# The arguments as one line of shell words, quoted only where a shell would split or expand them.
launch::quote() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "${out[*]}"
}

# Runs a command, or with --dry-run prints it (after the exported variables, the first time).
launch::run() {
  if ((LAUNCH_DRY_RUN)); then
    if ((!LAUNCH_ENV_PRINTED)); then
      local name
      for name in "${LAUNCH_ENV[@]}"; do launch::quote export "${name}=${!name}"; done
      LAUNCH_ENV_PRINTED=1
    fi
    launch::quote "$@"
  else
    "$@"
  fi
}

# The environment of a GPU run (launch/gpu_local.sh, launch/gpu_slurm.sbatch). Each value can be set in
# the environment beforehand; flags already in XLA_FLAGS come after ours and win, as XLA keeps the last
# value of a repeated flag.
launch::gpu_env() {
  # A node whose CUDA jaxlib or driver does not work stops at start-up, instead of JAX falling back to
  # its CPU backend and training there without a word.
  launch::setenv JAX_PLATFORMS "${JAX_PLATFORMS:-cuda}"
  # The process is alone on its GPUs: XLA may preallocate 90% of each one's memory instead of its
  # default 75%; the rest is for what allocates outside XLA's pool (cuBLAS/cuDNN workspaces, NCCL).
  launch::setenv XLA_PYTHON_CLIENT_MEM_FRACTION "${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  # With several GPUs the train step all-reduces its gradients; the latency hiding scheduler (off by
  # default in XLA; recommended by JAX's GPU performance tips) overlaps that with the backward pass.
  launch::setenv XLA_FLAGS "--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ ${XLA_FLAGS}}"
  # NCCL prints nothing by default: at WARN a failing collective (a link down, a wrong network
  # interface) says why instead of ending in a bare timeout. Site settings such as NCCL_SOCKET_IFNAME or
  # NCCL_IB_HCA belong to the cluster and are left to it.
  launch::setenv NCCL_DEBUG "${NCCL_DEBUG:-WARN}"
}
