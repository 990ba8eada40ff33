"""Trained models against the training-free text_knn on the shared Amazon data (the baselines study,
recg_jax/grid/baselines.py).

`python -m recg_jax.baselines --config=configs/baselines_shared.py --workdir=DIR`

SASRec at the reduced sizes of configs/grid_shared.py:reduced (d=64, one layer, lr 1e-3, at most 30 epochs,
patience 5), sources Scientific and Office, each towards the two other domains, seeds 0-2. Choices between
presets are made on a validation domain, never on the reported target: Games ← source picks, Office ←
Scientific and Scientific ← Office are reported (docs/method.md). `:paper_sizes` uses d=256, two layers,
two heads, lr 1e-3, patience 10, up to 200 epochs.
"""

from configs import grid_shared
from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "recbole"
  config.data.source = grid_shared.DOMAINS[0]
  config.data.targets = grid_shared.DOMAINS[1:]
  config.experiment.name = "baselines_shared"
  ec = config.experiment
  ec.domains = grid_shared.DOMAINS
  ec.sources = ("Scientific", "Office")
  ec.seeds = (0, 1, 2)
  ec.presets = (
      "text_knn",
      "text_knn_center",
      "sem",
      "recg",
      "sem_softmax",
      "text_residual",
      "text_attention",
      "text_mix",
      "text_mix_center",
      "recg_text_mix",
      "recg_softmax",
  )
  preset, _, rest = (arg or "").partition(",")
  if preset == "paper_sizes":
    # The Scientific source only, SASRec, the decisive presets (the time a 2-core CPU has).
    ec.sources = ("Scientific",)
    ec.presets = ("text_knn", "text_knn_center", "sem", "recg", "text_mix")
    config.experiment.name = "baselines_shared_paper_sizes"
    config.train.learning_rate = 1e-3
    config.train.patience = 10
  else:
    grid_shared.reduced_sizes(config)
    if preset not in ("", "reduced"):
      rest = arg  # no preset named: the whole argument is overrides
  return config_lib.apply_config_arg(config, rest or None)
