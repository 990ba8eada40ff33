"""The experiment grid: every source x backbone x variant x seed, the ablations and the alpha sweep.

`python -m recg_jax.experiments --config=configs/grid_shared.py --workdir=DIR`

Each run is a copy of the config with a few fields overridden, trained and evaluated in its own folder
DIR/runs/<source>/<backbone>-<variant>[-<ablation>]/seed<k>/ by the stages of recg_jax.pipeline (zero-shot
for 'sem' and 'recg': train on the source, sequence-level step, every target; in-domain only for 'id').
Data and embeddings are prepared once, with DIR as the cache root (DIR/cache/data, DIR/cache/embeddings),
and handed to every run in memory, so no run re-reads or re-embeds anything.

When a run has finished, `done.json` (its spec, records, config and wall time) is written next to its
results.json: a restarted grid skips every run that has both. Runs that differ only in seeds, alphas or
the L_gen switches train together as one program over stacked parameters (training.train_members,
at most experiment.member_group_size at a time); a group interrupted mid-training resumes from its latest
checkpoint under DIR/groups/ (a run alone, from its own). A run that raises is reported and the grid goes
on; the exit status is then non-zero.

Grid (config.experiment): `domains` (all domains; each source's targets are the others, which are also
the generalization-loss domains), `sources`, `backbones`, `variants`, `seeds`; `ablations` and `alphas` for
`ablation_backbone` on `ablation_source`, over `ablation_seeds`. After the runs, DIR/results.md and
DIR/results.csv hold the tables (mean ± std over seeds, paired t-test and gain of RecG over Sem) and
DIR/plots/*.png the figures (recg_jax.plots).

This module is the command line only (`recg-jax-experiments` once installed); the grid is recg_jax.grid:
planning (the runs and their configs), runner (running them, their completion markers), stats (aggregation
over seeds), report (the tables) and figures (the plots).
"""

from __future__ import annotations

import sys

from absl import flags

from recg_jax import cli
from recg_jax.grid import runner

_CONFIG = cli.config_file_flag()
_WORKDIR = cli.workdir_flag("Grid folder: caches, one folder per run, tables, plots.")
_AGGREGATE_ONLY = cli.aggregate_only_flag()
_PLOTS = flags.DEFINE_bool("plots", True, "Write DIR/plots/*.png after the tables.")


def main(argv):
  cli.start(argv, required=("config", "workdir"))
  cli.use_compilation_cache(_WORKDIR.value)
  summary = runner.run_grid(
      _CONFIG.value,
      _WORKDIR.value,
      command=cli.recorded_command("recg_jax.experiments", sys.argv[1:]),
      aggregate_only=_AGGREGATE_ONLY.value,
      make_plots=_PLOTS.value,
  )
  if summary["failed"]:
    raise SystemExit(f"{len(summary['failed'])} run(s) failed: {summary['failed']}")


def entry() -> None:
  cli.run(main, "experiments")


if __name__ == "__main__":
  entry()
