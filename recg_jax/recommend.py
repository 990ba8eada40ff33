r"""Command line: the top-k items of a new catalogue for every user, from a finished run or from no run.

  python -m recg_jax.recommend --catalogue=items.jsonl --histories=users.jsonl --out=recs.jsonl \
      [--workdir=RUN | --method=NAME [--encoder=MODEL]] [--top_k=20] [--export=DIR] [--keep_history] \
      [--on_unknown=skip]

Without --workdir, a training-free method scores (--method, default the best of the leave-one-domain-out
study; `serving.training_free_methods()` lists them), its catalogue embeddings cached under
$RECG_CACHE_DIR or ~/.cache/recg_jax unless --cache_root says otherwise. With --workdir=RUN, a finished
run of `python -m recg_jax.main` scores (nothing is trained or fitted here). The catalogue
(.item, .jsonl or .csv) is embedded with the run's encoder settings into the run's embedding cache; the
histories (.jsonl or .inter) name items of that catalogue, oldest first. The output (JSONL, or CSV with
--format=csv or a .csv name) is written atomically; --export=DIR also writes the item and user vectors the
scores come from. `--config.<field>=value` sets the batch and block sizes of recg_jax/config/serving.py.
This is a thin wrapper over recg_jax.serving (serving.recommend_files); `recg-jax-recommend` once installed.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recg_jax import cli
from recg_jax import serving
from recg_jax.config import serving as serving_config
from recg_jax.serving import histories as histories_lib
from recg_jax.serving import output

_WORKDIR = cli.workdir_flag("A finished run's folder; none: a training-free method (--method) scores.")
_METHOD = flags.DEFINE_string(
    "method",
    None,
    f"A training-free method (a text_knn preset) to score with when there is no --workdir; default "
    f"{serving_config.DEFAULT_METHOD}.",
)
_ENCODER = flags.DEFINE_string(
    "encoder",
    None,
    "With --method: the text encoder (a hub id, a local folder such as a tuned encoder, or "
    "package:<name>); default the default config's encoder.",
)
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
    "run's folder (a run of the experiment grid: the grid's folder), or with no run "
    "$RECG_CACHE_DIR or ~/.cache/recg_jax.",
)
config_flags.DEFINE_config_dict("config", serving_config.get_config(), "Batch and block sizes.")


def main(argv):
  # orbax's notes on reading a checkpoint would hide the output: errors only.
  cli.start(argv, required=("catalogue", "histories", "out"), quiet=logging.ERROR)
  if _WORKDIR.value and (_METHOD.value or _ENCODER.value):
    raise app.UsageError("--method and --encoder choose what scores without a run: give them or --workdir")
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
      method=_METHOD.value or "",
      encoder=_ENCODER.value or "",
  )


def entry() -> None:
  cli.run(main, "recommend")


if __name__ == "__main__":
  entry()
