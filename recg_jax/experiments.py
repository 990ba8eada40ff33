"""The experiment grid: every source x backbone x variant x seed, the ablations and the alpha sweep.

`python -m recg_jax.experiments --config=configs/grid_shared.py --workdir=DIR`

Each run is a copy of the config with a few fields overridden, trained and evaluated in its own folder
DIR/runs/<source>/<backbone>-<variant>[-<ablation>]/seed<k>/ by the stages of recg_jax.pipeline (zero-shot
for 'sem' and 'recg': train on the source, sequence-level step, every target; in-domain only for 'id').
Data and embeddings are prepared once, with DIR as the cache root (DIR/cache/data, DIR/cache/embeddings),
and handed to every run in memory, so no run re-reads or re-embeds anything.

When a run has finished, `done.json` (its spec, records, config and wall time) is written next to its
results.json: a restarted grid skips every run that has both. Runs that differ only in seeds, alphas or
the L_gen switches train together as one program over stacked parameters (recg_jax.train.train_members,
at most experiment.member_group_size at a time); a group interrupted mid-training resumes from its latest
checkpoint under DIR/groups/ (a run alone, from its own). A run that raises is reported and the grid goes
on; the exit status is then non-zero.

Grid (config.experiment): `domains` (all domains; each source's targets are the others, which are also
the generalization-loss domains), `sources`, `backbones`, `variants`, `seeds`; `ablations` and `alphas` for
`ablation_backbone` on `ablation_source`, over `ablation_seeds`. After the runs, DIR/results.md and
DIR/results.csv hold the tables (mean ± std over seeds, paired t-test and gain of RecG over Sem) and
DIR/plots/*.png the figures (recg_jax.plots).

This module is the command line only; the grid is recg_jax.grid: planning (the runs and their configs),
runner (running them, their completion markers), stats (aggregation over seeds), report (the tables) and
figures (the plots).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recg_jax import paths
from recg_jax.grid import runner


def recorded_command(argv: Sequence[str]) -> str:
  """The command that regenerates the whole grid: argv without the flags that only choose how this
  invocation works (its shard, aggregation only, plots, embeddings from the cache alone)."""
  own = ("--aggregate_only", "--noaggregate_only", "--plots", "--noplots",
         "--config.experiment.shard_index", "--config.experiment.num_shards", "--config.encoder.cache_only")
  kept = [a for a in argv if not any(a == f or a.startswith(f + "=") for f in own)]
  return shlex.join(["python", "-m", "recg_jax.experiments", *kept])


_WORKDIR = flags.DEFINE_string("workdir", None, "Grid folder: caches, one folder per run, tables, plots.")
_AGGREGATE_ONLY = flags.DEFINE_bool("aggregate_only", False,
                                    "Train nothing: rebuild the tables and plots from the finished runs.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write DIR/plots/*.png after the tables.")
config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py or file.py:arg).",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # as recg_jax.main: orbax's INFO lines hide the grid's output
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Within the process, runs reuse the programs of earlier runs of the same shapes; the persistent
    # cache keeps them across restarts (and across shards sharing the workdir).
    jax.config.update("jax_compilation_cache_dir",
                      str(paths.absolute(_WORKDIR.value) / "cache" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  command = recorded_command(sys.argv[1:])
  summary = runner.run_grid(flags.FLAGS.config, _WORKDIR.value, command=command,
                            aggregate_only=_AGGREGATE_ONLY.value, make_plots=_PLOTS.value)
  if summary["failed"]:
    raise SystemExit(f"{len(summary['failed'])} run(s) failed: {summary['failed']}")


if __name__ == "__main__":
  app.run(main)
