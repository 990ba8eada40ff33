"""Amazon Reviews 2023 Books -> Movies_and_TV, from raw files (downloaded, or local: data.amazon2023.raw_dir).

Books is tens of GB: the reader streams it, keeps reviews from data.amazon2023.min_year on, and caps the
number of users (seeded) so that preprocessing fits a workstation.
"""

from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "amazon2023"
  config.data.source = "Books"
  config.data.targets = ("Movies_and_TV",)
  config.data.text_fields = ("title", "store", "categories", "features", "description")
  config.data.amazon2023.download = True
  config.data.amazon2023.min_year = 2018
  config.data.amazon2023.max_users = 200_000
  config.experiment.name = "books_to_movies"
  return config_lib.apply_config_arg(config, arg)
