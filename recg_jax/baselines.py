"""Command line of the baselines study (recg_jax.grid.baselines): trained models against the training-free
`text_knn`, under both protocols, in-domain and zero-shot (`recg-jax-baselines` once installed).

`python -m recg_jax.baselines --config=configs/baselines_shared.py --workdir=DIR`

With experiment.study='leave_one_out' (configs/lodo_shared.py) it runs the leave-one-domain-out study
(recg_jax.grid.lodo) instead, and with 'warm_start' (configs/warm_start_shared.py) the warm-start study
(recg_jax.grid.warm_start): budgets of each domain's interactions, from scratch and fine-tuned; with
'in_domain' (configs/in_domain_shared.py) the same machinery at the one budget of 100%. Finished
runs are skipped when the study is restarted, a killed run resumes from its checkpoint, and DIR/results.md
is rewritten after every run. `--aggregate_only` rebuilds the tables from finished runs.
"""

from __future__ import annotations

import sys

from recg_jax import cli
from recg_jax.grid import baselines
from recg_jax.grid import lodo
from recg_jax.grid import warm_start

_CONFIG = cli.config_file_flag()
_WORKDIR = cli.workdir_flag("Study folder: caches, one folder per run, tables.")
_AGGREGATE_ONLY = cli.aggregate_only_flag()


def main(argv):
  cli.start(argv, required=("config", "workdir"))
  cli.use_compilation_cache(_WORKDIR.value)
  studies = {"leave_one_out": lodo, "warm_start": warm_start, "in_domain": warm_start}
  study = studies.get(str(_CONFIG.value.experiment.study), baselines)
  summary = study.run_study(
      _CONFIG.value,
      _WORKDIR.value,
      command=cli.recorded_command("recg_jax.baselines", sys.argv[1:]),
      aggregate_only=_AGGREGATE_ONLY.value,
  )
  print(f"[baselines] tables: {summary['tables']}", flush=True)
  if summary["failed"]:
    raise SystemExit(f"{len(summary['failed'])} run(s) failed: {summary['failed']}")


def entry() -> None:
  cli.run(main, "baselines")


if __name__ == "__main__":
  entry()
