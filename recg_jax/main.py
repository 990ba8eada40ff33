"""Command line: `python -m recg_jax.main --config=configs/quickstart.py --workdir=DIR` (or `recg-jax`).

Runs the stages of recg_jax.pipeline up to config.experiment.mode. Any config field can be overridden with
`--config.section.field=value`; the config is locked, so a misspelt field is an error rather than a silent
no-op.
"""

from absl import app
from absl import flags
import jax

from recg_jax import cli
from recg_jax import distributed
from recg_jax import pipeline

_CONFIG = cli.config_file_flag()
_WORKDIR = cli.workdir_flag("Directory for caches, checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join the other processes first (jax.distributed.initialize): one process per host on TPU pods and GPU "
    "clusters, or several local processes. TPU pods and Slurm need nothing more.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for clusters JAX does not discover (with "
    "--distributed, --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part (--distributed).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes-1 (--distributed)."
)


def main(argv):
  cli.start(argv, required=("config", "workdir"))
  explicit = [f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)]
  if any(explicit) and not _DISTRIBUTED.value:
    raise app.UsageError("--coordinator_address / --num_processes / --process_id need --distributed")
  if _DISTRIBUTED.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  print(
      f"process {jax.process_index()}/{jax.process_count()}, local devices: {jax.local_devices()}", flush=True
  )
  pipeline.run(_CONFIG.value, _WORKDIR.value)


def entry() -> None:
  cli.run(main, "main")


if __name__ == "__main__":
  entry()
