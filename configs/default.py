"""Every field at its default (recg_jax/config/default.py: the defaults of docs/method.md).

`--config=configs/default.py[:key=value,...]` runs them as they are; the other files here start from the
same `get_config()` and override fields.
"""

from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.apply_config_arg(config_lib.get_config(), arg)
