"""From day one to day N on the shared Amazon domains (the study of recg_jax/grid/warm_start.py).

`python -m recg_jax.baselines --config=configs/warm_start_shared.py --workdir=DIR`

On LuxuryBeauty, Office, Scientific, Kitchen and Games (the largest catalogue last), budgets of 1, 5, 20,
50 and 100% of each domain's training interactions (whole users); on each budget the cross-entropy ID
reference `id_ce` and the best hybrid of the in-domain study (`fusion`: id_ce's scores and the text
baseline's, with its weight fitted on the budget's own validation users, so that a weak trained part falls
back to the text), and `fusion_holdout`, the same fusion with its weight fitted on a fifth of the budget's
users held out of its trained part's training; trained from scratch, three seeds, beside the training-free
text baseline. Every preset trains as practitioners train SASRec (presets.CE_TRAINING), each run alone. The
folder may be the in-domain study's (configs/in_domain_shared.py): the 100% runs are the same runs and are
reused; where they were lost, `--config.experiment.earlier_values` may name the in-domain table's JSON
beside this study's own (comma-separated), as the command in results/warm_start_shared/results.md does.

`:finetune` runs the earlier form of the study instead: the paper's BPR models and the text-mix model at the
leave-one-out study's reduced sizes, from scratch and fine-tuned from that study's runs
(`--config.experiment.init_study=LODO_DIR`).
"""

from configs import lodo_shared
from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  part, _, rest = (arg or "").partition(",")
  if part == "finetune":
    return _finetune(rest)
  config = config_lib.get_config()
  config.data.format = "recbole"
  ec = config.experiment
  ec.name = "warm_start_shared"
  ec.study = "warm_start"
  ec.domains = ("LuxuryBeauty", "Office", "Scientific", "Kitchen", "Games")
  ec.validation_domains = ()
  ec.text_presets = ("text_knn_center_soft02",)  # the day-one default (presets.TEXT_BASELINE)
  # The ID reference first: `fusion` fits over its runs; `fusion_holdout` trains its own part without a
  # fifth of the budget's users and fits theta on them.
  ec.presets = ("id_ce", "fusion", "fusion_holdout")
  ec.reference_preset = "id_ce"
  ec.finetune_presets = ()
  ec.budgets = (0.01, 0.05, 0.2, 0.5, 1.0)
  ec.seeds = (0, 1, 2)
  ec.member_group_size = 1
  config.train.max_users_per_source = 0
  config.data.source, config.data.targets = ec.domains[0], ()
  return config_lib.apply_config_arg(config, (arg if part else rest) or None)


def _finetune(arg: str):
  """The study as it ran before the cross-entropy references: BPR and text-mix presets at the reduced
  sizes, from scratch and fine-tuned from the leave-one-out runs."""
  config = lodo_shared.get_config()
  ec = config.experiment
  ec.name = "warm_start_shared_finetune"
  ec.study = "warm_start"
  ec.domains = ("LuxuryBeauty", "Office", "Scientific", "Kitchen")
  ec.validation_domains = ()
  ec.text_presets = ("text_knn_center_soft02", "text_knn_center")
  ec.presets = ("id", "id_long", "sem", "text_mix_center_masked")
  ec.finetune_presets = ("sem", "text_mix_center_masked")
  ec.reference_preset = "id_long"
  ec.budgets = (0.01, 0.05, 0.2, 0.5, 1.0)
  ec.seeds = (0, 1, 2)
  ec.single_source_presets, ec.in_domain_presets = (), ()
  config.data.source, config.data.targets = ec.domains[0], ec.domains[1:]
  config.train.max_users_per_source = 0
  return config_lib.apply_config_arg(config, arg or None)
