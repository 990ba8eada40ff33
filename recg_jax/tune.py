r"""Command line: tune the text encoder on the source domains' interactions (or `recg-jax-tune`).

  python -m recg_jax.tune --config=configs/lodo_shared.py \
      --config.data.source=Scientific+Office+LuxuryBeauty+Food+Kitchen --workdir=runs/tuned

Tunes config.encoder contrastively on config.data.source's interactions ('A+B+...' for several; a
target's interactions are never read) with the settings of config.tuning (recg_jax/tuning/), resuming
from the workdir's latest checkpoint after a kill, and writes the tuned encoder to <workdir>/encoder: a
Hugging Face folder that every command takes as `--config.encoder.model=<workdir>/encoder` (and
`recommend --encoder=<workdir>/encoder`). docs/method.md says what tuning measured: it is not the default.
"""

from recg_jax import cli
from recg_jax import paths
from recg_jax import pipeline

_CONFIG = cli.config_file_flag()
_WORKDIR = cli.workdir_flag("Directory for the tuning's caches, checkpoints, log and the tuned encoder.")


def main(argv):
  from recg_jax import tuning  # pylint: disable=g-import-not-at-top  (loads encoder code)

  cli.start(argv, required=("config", "workdir"))
  config, workdir = _CONFIG.value, paths.as_path(_WORKDIR.value)
  sources_only = config.copy_and_resolve_references()
  sources_only.data.targets, sources_only.data.auxiliary = (), ()  # tuning reads the sources alone
  domains = pipeline.prepare_data(sources_only, workdir)
  tables = pipeline.embed_domains(sources_only, workdir, domains)  # the frozen rows mine hard negatives
  tuned = tuning.tune(config, workdir, domains, tables)
  metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(tuned.metrics.items()))
  print(
      f"[tune] tuned encoder: {tuned.folder} ({metrics}); use it with --config.encoder.model={tuned.folder}"
  )


def entry() -> None:
  cli.run(main, "tune")


if __name__ == "__main__":
  entry()
