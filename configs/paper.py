"""The paper's domains: Amazon Reviews 2023 Industrial_and_Scientific, Video_Games, Musical_Instruments.

Raw files are read from data.amazon2023.raw_dir (downloaded there first when data.amazon2023.download).
"""

from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "amazon2023"
  config.data.source = "Industrial_and_Scientific"
  config.data.targets = ("Video_Games", "Musical_Instruments")
  config.data.text_fields = ("title", "store", "categories", "features", "description")
  config.data.amazon2023.download = True
  config.experiment.name = "paper"
  return config_lib.apply_config_arg(config, arg)
