"""From day one to day N on the shared Amazon domains (the study of recg_jax/grid/warm_start.py).

`python -m recg_jax.baselines --config=configs/warm_start_shared.py --workdir=DIR
--config.experiment.init_study=LODO_DIR`, LODO_DIR being the folder of the leave-one-domain-out study
(configs/lodo_shared.py), whose runs the fine-tuned presets start from.

On each test target of that study (LuxuryBeauty, Office, Scientific, Kitchen, the smallest first), budgets
of 1, 5, 20, 50 and 100% of its training interactions; on each budget, SASRec with ID embeddings (at the
study's epoch cap, and trained to convergence: `id_long`, up to 200 epochs, patience 10), Sem and the
centred text-mix model with the history masked trained from scratch, and the last two also fine-tuned
from the runs trained on the five other domains. The model sizes and training settings are the
leave-one-out study's (d=64, one layer, lr 1e-3, at most 20 epochs, patience 3), so that its parameters
fit; fine-tuning keeps them too: no learning rate, epoch count or frozen part was searched, so no
validation domain is consulted. The text baseline is the one the leave-one-out study chose on its
validation domains (Games, Food): `text_knn_center_soft02`; `text_knn_center` is shown beside it.
"""

from configs import lodo_shared
from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = lodo_shared.get_config()
  ec = config.experiment
  ec.name = "warm_start_shared"
  ec.study = "warm_start"
  ec.domains = ("LuxuryBeauty", "Office", "Scientific", "Kitchen")
  ec.validation_domains = ()
  ec.text_presets = ("text_knn_center_soft02", "text_knn_center")
  ec.presets = ("id", "id_long", "sem", "text_mix_center_masked")
  ec.finetune_presets = ("sem", "text_mix_center_masked")
  ec.budgets = (0.01, 0.05, 0.2, 0.5, 1.0)
  ec.seeds = (0, 1, 2)
  ec.single_source_presets, ec.in_domain_presets = (), ()
  config.data.source, config.data.targets = ec.domains[0], ec.domains[1:]
  config.train.max_users_per_source = 0
  return config_lib.apply_config_arg(config, arg or None)
