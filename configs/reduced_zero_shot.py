"""A reduced zero-shot experiment: one source, SASRec as Sem, RecG and text_knn, one seed, small models.

`python -m recg_jax.experiments --config=configs/reduced_zero_shot.py:DATA --workdir=DIR` writes the grid's
tables (DIR/results.md, results.csv) and figures (DIR/plots/*.png) for one of three data choices:

  synthetic   the quickstart's generated three-domain data and model sizes (configs/quickstart.py);
  recbole     Scientific -> Office, Games from RecBole atomic folders under data.root ($RECG_DATA_ROOT or
              --config.data.root=DIR), at the reduced sizes of configs/grid_shared.py;
  amazon2023  the paper's domains (configs/paper.py), raw Amazon Reviews 2023 files downloaded into
              DIR/raw/amazon2023 (or read from data.amazon2023.raw_dir), users capped at
              data.amazon2023.max_users, at the same reduced sizes.

This is the experiment of notebooks/colab_reproduction.ipynb; any field can still be overridden, e.g.
`--config.experiment.seeds='(0,1,2)'` for means and t-tests over three seeds.
"""

from configs import amazon_shared
from configs import grid_shared
from configs import paper
from configs import quickstart
from recg_jax import config as config_lib

DATA_CHOICES = ("synthetic", "recbole", "amazon2023")
# Users kept per Amazon 2023 domain (seeded sample, before k-core filtering): the whole categories have
# millions, which a free Colab runtime cannot embed and train on in one sitting.
AMAZON2023_MAX_USERS = 100_000


def get_config(arg: str | None = None):
  choice, _, rest = (arg or "synthetic").partition(",")
  if choice == "synthetic":
    config = quickstart.get_config()
  elif choice == "recbole":
    config = amazon_shared.get_config()
    grid_shared.reduced_sizes(config)
  elif choice == "amazon2023":
    config = paper.get_config()
    config.data.amazon2023.max_users = AMAZON2023_MAX_USERS
    grid_shared.reduced_sizes(config)
  else:
    raise ValueError(
        f"config argument {choice!r}: expected one of {DATA_CHOICES}, then optional key=value pairs"
    )
  config.experiment.name = f"reduced_zero_shot_{choice}"
  ec = config.experiment
  ec.sources = (config.data.source,)
  ec.backbones = ("sasrec",)
  ec.variants = ("sem", "recg", "text_knn")
  ec.seeds = (0,)
  ec.ablations = ()
  ec.alphas = ()
  return config_lib.apply_config_arg(config, rest or None)
