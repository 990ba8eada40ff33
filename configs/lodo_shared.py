"""Leave one domain out on the six shared Amazon domains (the study of recg_jax/grid/lodo.py).

`python -m recg_jax.baselines --config=configs/lodo_shared.py --workdir=DIR`

Every domain is the zero-shot target of models trained on the five others; Games and Food are the
validation domains on which every choice is made, Scientific, Office, LuxuryBeauty and Kitchen the test
targets. Beside the multi-source presets: the training-free text presets on every domain (the best of them
on the validation domains is the text baseline), the centred text-mix model trained on each domain alone (the
best single source per target, and an in-domain reference), and SASRec with ID embeddings in-domain (at the
study's epoch cap, `id`, and to convergence, `id_long`). SASRec
at the reduced sizes of configs/grid_shared.py:reduced (d=64, one layer, lr 1e-3), at most 20 epochs with
patience 3, 2,000 users per source in training, seeds 0-2. `:paper_sizes` trains the decisive presets at
the paper's sizes (d=256, two layers, two heads, patience 10, up to 200 epochs).
"""

from configs import grid_shared
from recg_jax import config as config_lib

DOMAINS = ("Scientific", "Office", "Games", "LuxuryBeauty", "Food", "Kitchen")
VALIDATION = ("Games", "Food")
TEXT_PRESETS = (
    "text_knn",
    "text_knn_center",
    "text_knn_center_d1",
    "text_knn_center_d08",
    "text_knn_center_d03",
    "text_knn_center_last",
    "text_knn_center_max",
    "text_knn_center_soft005",
    "text_knn_center_soft02",
    "text_knn_std_soft02",
    "text_knn_whiten_soft02",
    "text_knn_whiten1_soft02",
    "text_knn_center_title",
)
PRESETS = (
    "text_mix_center_masked",
    "text_knn_center_fit",
    "sem",
    "recg",
    "recg_target_text",
    "text_attention_center_masked",
)


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "recbole"
  config.data.source = DOMAINS[0]
  config.data.targets = DOMAINS[1:]
  ec = config.experiment
  ec.name = "lodo_shared"
  ec.study = "leave_one_out"
  ec.domains = DOMAINS
  ec.validation_domains = VALIDATION
  ec.seeds = (0, 1, 2)
  ec.text_presets = TEXT_PRESETS
  ec.presets = PRESETS
  ec.single_source_presets = ("text_mix_center_masked",)
  ec.in_domain_presets = ("id", "id_long")
  config.gen_loss.include_targets = False  # the target's catalogue is unknown before training
  config.train.max_users_per_source = 2000
  # One size for every run's stacked source tables (the largest domain, Games: 16,428 items), so that all
  # runs of a preset share one compiled step.
  config.train.source_table_rows = 16429
  preset, _, rest = (arg or "").partition(",")
  if preset == "paper_sizes":
    ec.name = "lodo_shared_paper_sizes"
    ec.presets = ("sem", "recg", "text_mix_center_masked")
    ec.text_presets, ec.single_source_presets, ec.in_domain_presets = ("text_knn", "text_knn_center"), (), ()
    config.train.learning_rate = 1e-3
    config.train.patience = 10
  else:
    grid_shared.reduced_sizes(config)
    config.train.num_epochs = 20
    config.train.patience = 3
    if preset not in ("", "reduced"):
      rest = arg
  return config_lib.apply_config_arg(config, rest or None)
