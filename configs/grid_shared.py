"""The experiment grid on the shared Amazon data: Scientific, Office and Games, each source to the others.

`python -m recg_jax.experiments --config=configs/grid_shared.py --workdir=DIR`

Full grid (default): 3 sources x 3 backbones x {ID, Sem, RecG} x 3 seeds with text_knn beside them (no
training, once per source and seed), the five ablations and the paper's alpha grid for SASRec trained on
Scientific, at the paper's model sizes (the defaults, recg_jax/config/default.py). The
paper's Table 5 ablates BERT4Rec (IS -> VG): `--config.experiment.ablation_backbone=bert4rec`, about five
times the cost on a CPU (BERT4Rec trains on one row per prefix). Drop the ID runs with
`--config.experiment.variants='("sem","recg","text_knn")'`.

`--config=configs/grid_shared.py:scientific` is the full grid's slice with Scientific as the source: every
backbone and variant, three seeds, the ablations and the alpha sweep (54 trained runs and 3 of text_knn
at the paper's sizes; it holds the in-domain table of Scientific too). One process fills one accelerator:
runs that differ only in seeds, alpha or the L_gen switches train together as one program
(`experiment.member_group_size`); `launch/grid_shards.sh N ...` is for N devices or hosts.

`--config=configs/grid_shared.py:reduced_scientific` has the reduced model sizes below with Scientific as
the source: every backbone as ID, Sem and RecG over three seeds (in-domain and zero-shot to Office and
Games), and the ablations and the alpha sweep of SASRec-RecG on one seed, with the `merge_identity` variant
(37 trained runs and 3 of text_knn, about 1.2 h of run time on a 2-core CPU with two shards).

`--config=configs/grid_shared.py:reduced` is a small grid that finishes in about an hour on a 2-core CPU:
SASRec and GRU4Rec, Sem and RecG, three seeds, trained on Office and on Scientific (the two smaller
domains), each towards the two others, with d=64, one layer and at most 30 epochs; its numbers exercise the
whole pipeline with seeds and t-tests, they are not the paper's setting (measured: 45 minutes with other
jobs on the same 2 cores). Any field can still be overridden after the preset, e.g.
`--config.experiment.seeds='(0,1)'`.
"""

from recg_jax import config as config_lib

DOMAINS = ("Scientific", "Office", "Games")
PAPER_ALPHAS = (5e-2, 1e-2, 5e-3, 1e-3, 5e-4, 1e-4)


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "recbole"
  config.data.source = DOMAINS[0]
  config.data.targets = DOMAINS[1:]
  config.experiment.name = "grid_shared"
  ec = config.experiment
  ec.domains = DOMAINS
  ec.sources = DOMAINS
  ec.backbones = ("sasrec", "bert4rec", "gru4rec")
  ec.variants = ("id", "sem", "recg", "text_knn")
  ec.seeds = (0, 1, 2)
  ec.ablations = ("no_item_loss", "no_intra", "no_inter", "no_seq", "printed_sign")
  ec.ablation_backbone = "sasrec"
  ec.ablation_source = "Scientific"
  ec.alphas = PAPER_ALPHAS
  preset, _, rest = (arg or "").partition(",")
  if preset == "reduced":
    _reduced(config)
  elif preset == "scientific":
    ec.sources = ("Scientific",)
  elif preset == "reduced_scientific":
    _reduced(config)
    ec.sources = ("Scientific",)
    ec.backbones = ("sasrec", "bert4rec", "gru4rec")
    ec.variants = ("id", "sem", "recg", "text_knn")
    ec.ablations = ("no_item_loss", "no_intra", "no_inter", "no_seq", "printed_sign", "merge_identity")
    ec.alphas = PAPER_ALPHAS
    ec.ablation_source = "Scientific"
    ec.ablation_seeds = (0,)
  elif preset not in ("", "full"):
    rest = arg
  return config_lib.apply_config_arg(config, rest or None)


def _reduced(config) -> None:
  """About an hour on a 2-core CPU: 24 runs of 1-5 minutes each."""
  ec = config.experiment
  ec.sources = ("Office", "Scientific")
  ec.backbones = ("sasrec", "gru4rec")
  ec.variants = ("sem", "recg", "text_knn")
  ec.seeds = (0, 1, 2)
  ec.ablations = ()
  ec.alphas = ()
  ec.ablation_backbone = "sasrec"
  ec.ablation_source = "Office"
  reduced_sizes(config)


def reduced_sizes(config) -> None:
  """The reduced model of every table under results/: d=64, one layer, lr 1e-3, <= 30 epochs, patience 5."""
  config.model.hidden_dim = 64
  config.model.num_layers = 1
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 30
  config.train.patience = 5
