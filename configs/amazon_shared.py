"""Amazon Scientific / Office / Games as RecBole atomic folders under data.root (or $RECG_DATA_ROOT).

Default: source Scientific, targets Office and Games. Choose others with a config argument:
  --config=configs/amazon_shared.py:source=Office,targets=Scientific+Games
"""

from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "recbole"
  config.data.source = "Scientific"
  config.data.targets = ("Office", "Games")
  config.experiment.name = "amazon_shared"
  return config_lib.apply_config_arg(config, arg)
