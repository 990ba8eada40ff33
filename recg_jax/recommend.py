r"""Command line: the top-k items of a new catalogue for every user, from a finished run.

  python -m recg_jax.recommend --workdir=RUN --catalogue=items.jsonl --histories=users.jsonl \
      --top_k=20 --out=recs.jsonl [--export=DIR] [--keep_history] [--on_unknown=skip]

RUN is a finished run of `python -m recg_jax.main` (nothing is trained or fitted here). The catalogue
(.item, .jsonl or .csv) is embedded with the run's encoder settings into the run's embedding cache; the
histories (.jsonl or .inter) name items of that catalogue, oldest first. The output (JSONL, or CSV with
--format=csv or a .csv name) is written atomically; --export=DIR also writes the item and user vectors the
scores come from. `--config.<field>=value` sets the batch and block sizes of recg_jax/config/serving.py.
This is a thin wrapper over recg_jax.serving (serving.recommend_files); `recg-jax-recommend` once installed.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from recg_jax import cli
from recg_jax import serving
from recg_jax.config import serving as serving_config
from recg_jax.serving import histories as histories_lib
from recg_jax.serving import output

_WORKDIR = cli.workdir_flag("A finished run's folder.")
_CATALOGUE = flags.DEFINE_string(
    "catalogue", None, "Items to recommend: a RecBole .item, .jsonl or .csv file."
)
_HISTORIES = flags.DEFINE_string(
    "histories", None, "Users' histories: .jsonl ({'user_id', 'items'}) or .inter."
)
_OUT = flags.DEFINE_string("out", None, "Output file (JSONL, or CSV for a .csv name or --format=csv).")
_TOP_K = flags.DEFINE_integer("top_k", 20, "Items per user (at most the catalogue's size).")
_FORMAT = flags.DEFINE_enum(
    "format", "", ["", *output.FORMATS], "Output format; default from --out's suffix."
)
_KEEP_HISTORY = flags.DEFINE_bool(
    "keep_history", False, "Also recommend items of the user's own history (left out by default)."
)
_ON_UNKNOWN = flags.DEFINE_enum(
    "on_unknown",
    "error",
    list(histories_lib.ON_UNKNOWN),
    "A history item that is not in the catalogue: stop with an error naming it, "
    "or skip it (and a user left with none) and report the count.",
)
_EXPORT = flags.DEFINE_string("export", "", "Also write item and user vectors (.npy) with id indexes here.")
_NAME = flags.DEFINE_string(
    "catalogue_name", "", "Names the catalogue's embedding cache; default the catalogue file's name."
)
_CACHE_ROOT = flags.DEFINE_string(
    "cache_root",
    "",
    "Folder whose cache/embeddings/ keeps catalogue embeddings; default the "
    "run's folder (a run of the experiment grid: the grid's folder).",
)
config_flags.DEFINE_config_dict("config", serving_config.get_config(), "Batch and block sizes.")


def main(argv):
  # orbax's notes on reading a checkpoint would hide the output: errors only.
  cli.start(argv, required=("workdir", "catalogue", "histories", "out"), quiet=logging.ERROR)
  serving.recommend_files(
      _WORKDIR.value,
      _CATALOGUE.value,
      _HISTORIES.value,
      _OUT.value,
      top_k=_TOP_K.value,
      fmt=_FORMAT.value,
      keep_history=_KEEP_HISTORY.value,
      on_unknown=_ON_UNKNOWN.value,
      export=_EXPORT.value,
      catalogue_name=_NAME.value,
      cache_root=_CACHE_ROOT.value,
      settings=flags.FLAGS.config,
  )


def entry() -> None:
  cli.run(main, "recommend")


if __name__ == "__main__":
  entry()
