"""In-domain on the six shared Amazon domains: the training-free text baseline, the cross-entropy
references and every hybrid of text and interactions, three seeds (recg_jax/grid/warm_start.py at the one
budget of 100%, with its own table, recg_jax/grid/in_domain_report.py).

  python -m recg_jax.baselines --config=configs/in_domain_shared.py --workdir=DIR          # four domains
  python -m recg_jax.baselines --config=configs/in_domain_shared.py:large --workdir=DIR    # Games, Kitchen

The first runs the four smaller domains with every preset; `:large` the two large ones (Games, Kitchen)
with the references and the two best hybrids of the small domains (LARGE_PRESETS); `:first` the ID
reference and the fusion on all six (what the study ran first). Both write into one
folder and one table (DIR/in_domain.md). Every user of a domain trains (no per-domain user cap), every
trained preset is SASRec at RecBole's sizes with cross-entropy over the catalogue (presets.CE_TRAINING),
each run alone (a run's seeds do not train as stacked members: each stops at its own epoch). The
warm-start study (configs/warm_start_shared.py) shares the folder and reuses its runs at 100%.

Where DIR does not outlive the machine, `--config.experiment.archive=A` keeps each finished run's markers in
A as it finishes and restores them into any DIR (recg_jax/grid/archive.py); results/shared_study_runs is
this project's, committed with the tables. With
  --config.experiment.earlier_values=results/in_domain_shared/earlier/results.json
the table fills the cells of runs whose folders were lost before the archive existed.
"""

from recg_jax import config as config_lib

SMALL = ("LuxuryBeauty", "Office", "Food", "Scientific")
LARGE = ("Games", "Kitchen")
# The first is the text baseline of the table: the day-one default (presets.TEXT_BASELINE).
TEXT_PRESETS = ("text_knn_center_soft02", "text_knn_whiten_soft02")
# The ID reference first: the fusion fits over its runs.
PRESETS = ("id_ce", "fusion", "sem_ce", "id_text_init", "alphafuse", "id_text_offset", "text_mix_id")
# The references and the best hybrids of the small domains (results/in_domain_shared): the fusion (above
# both references on all four), id_text_init (above the fusion on Food, level on Office, below on
# LuxuryBeauty and Scientific) and alphafuse (the first chosen, on LuxuryBeauty and Office alone; it has
# run on Kitchen). On Games id_text_init is level with the fusion. id_text_offset and text_mix_id were
# below id_ce on LuxuryBeauty, Office and Food, and far below the fusion on Scientific.
LARGE_PRESETS = ("id_ce", "fusion", "sem_ce", "id_text_init", "alphafuse")


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "recbole"
  ec = config.experiment
  ec.name = "in_domain_shared"
  ec.study = "in_domain"
  ec.domains = SMALL
  ec.validation_domains = ()
  ec.text_presets = TEXT_PRESETS
  ec.presets = PRESETS
  ec.finetune_presets = ()
  ec.reference_preset = "id_ce"
  ec.seeds = (0, 1, 2)
  ec.member_group_size = 1
  config.train.max_users_per_source = 0
  part, _, rest = (arg or "").partition(",")
  if part == "large":
    ec.domains, ec.presets = LARGE, LARGE_PRESETS
  elif part == "first":
    ec.domains, ec.presets = SMALL + LARGE, ("id_ce", "fusion")
  elif part:
    rest = arg
  config.data.source, config.data.targets = ec.domains[0], ()
  return config_lib.apply_config_arg(config, rest or None)
