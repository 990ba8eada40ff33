"""A run's config: every field with its default (default.py), the role each field plays (roles.py), named
presets (presets.py), overrides and recorded configs (overrides.py), and the serving settings (serving.py).

The config files under configs/ build on `get_config()`; nothing in the package reads configs/.
"""

from recg_jax.config.default import DATA_ROOT_ENV
from recg_jax.config.default import get_config
from recg_jax.config.overrides import apply_config_arg
from recg_jax.config.overrides import apply_preset
from recg_jax.config.overrides import from_record
from recg_jax.config.overrides import merged_over_defaults
from recg_jax.config.overrides import override
from recg_jax.config.presets import PRESETS

__all__ = [
    "DATA_ROOT_ENV",
    "PRESETS",
    "apply_config_arg",
    "apply_preset",
    "from_record",
    "get_config",
    "merged_over_defaults",
    "override",
]
