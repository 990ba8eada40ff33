"""What the command lines share: their common flags (defined once per process, whichever command imports
them first), the start of a command (unexpected arguments, quiet library logging), the persistent
compilation cache, the command a study records to regenerate itself, and the entry point, which makes
`--help` describe the command however it was started and turns an error the project raises on purpose
(recg_jax.errors.RecgError) into one line and exit status 1.

The commands (`main`, `experiments`, `baselines`, `recommend`, `tune`) are thin shells over the libraries.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recg_jax import errors
from recg_jax import paths

_DEFINED: dict[str, Any] = {}


def _once(name: str, define: Callable[[], Any]) -> Any:
  """The flag holder of `name`, defined on the first call (absl allows one definition per process)."""
  if name not in _DEFINED:
    _DEFINED[name] = define()
  return _DEFINED[name]


def config_file_flag() -> Any:
  return _once(
      "config",
      lambda: config_flags.DEFINE_config_file(
          "config", None, "Path to a config file (file.py or file.py:arg).", lock_config=True
      ),
  )


def workdir_flag(help_text: str) -> flags.FlagHolder:
  return _once("workdir", lambda: flags.DEFINE_string("workdir", None, help_text))


def aggregate_only_flag() -> flags.FlagHolder:
  return _once(
      "aggregate_only",
      lambda: flags.DEFINE_bool(
          "aggregate_only", False, "Train nothing: rebuild the tables (and plots) from the finished runs."
      ),
  )


def start(argv: Sequence[str], required: Sequence[str] = (), quiet: int = logging.WARNING) -> None:
  """Refuses stray arguments and missing required flags; unless --verbosity was given, keeps libraries'
  INFO lines (orbax, XLA) out of the command's own output."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
  if missing:
    raise app.UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(quiet)


def use_compilation_cache(workdir: str) -> None:
  """Keeps compiled programs in <workdir>/cache/xla across restarts (and across shards sharing the
  workdir), unless JAX_COMPILATION_CACHE_DIR names another folder."""
  import jax  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  jax.config.update("jax_compilation_cache_dir", str(paths.absolute(workdir) / "cache" / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Flags that choose how one invocation works (its shard, aggregation only, plots, embeddings from the cache
# alone), not what it computes: left out of the command a study records.
INVOCATION_FLAGS = (
    "--aggregate_only",
    "--noaggregate_only",
    "--plots",
    "--noplots",
    "--config.experiment.shard_index",
    "--config.experiment.num_shards",
    "--config.encoder.cache_only",
)


def recorded_command(module: str, argv: Sequence[str]) -> str:
  """`python -m <module> <argv>` without INVOCATION_FLAGS: the command that regenerates a whole study."""
  kept = [a for a in argv if not any(a == f or a.startswith(f + "=") for f in INVOCATION_FLAGS)]
  return shlex.join(["python", "-m", module, *kept])


# Set to anything but "" or "0", shows the traceback of an error the project raises on purpose (as
# --verbose does).
VERBOSE_ENV = "RECG_VERBOSE"


def verbose_flag() -> flags.FlagHolder:
  return _once(
      "verbose",
      lambda: flags.DEFINE_bool(
          "verbose",
          False,
          f"On an error of bad input or config, also show its traceback (or set {VERBOSE_ENV}=1).",
      ),
  )


def one_line(error: BaseException) -> str:
  """The error's message on one line (its own line breaks folded)."""
  return " ".join(str(error).split()) or type(error).__name__


def fail(command: str, error: BaseException) -> NoReturn:
  """Ends the command with exit status 1 after one line on stderr: `<command>: error: <message>`."""
  print(f"{command}: error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(1)


def describe_command(module_name: str) -> None:
  """Makes `--help` describe the command of module `module_name` whatever started it.

  absl's `--help` prints the docstring of `__main__` and the key flags of the module it takes for the main
  one, named by sys.argv[0]. Under `python -m recg_jax.<command>` that is the command's module; under an
  installed console script (`recg-jax-recommend`, ...) it is the script pip wrote, which has neither a
  docstring nor flags. So the command module's docstring becomes `__main__`'s when that has none, and every
  flag the command reads (those its module defines, the shared ones of this module it holds, --verbose)
  becomes a key flag of the main module.
  """
  module = sys.modules.get(module_name)
  main_module = sys.modules.get("__main__")
  if module is None:
    return
  if main_module is not None and not main_module.__doc__ and module.__doc__:
    main_module.__doc__ = module.__doc__
  registered = sys.argv[0] if module_name == "__main__" else module_name
  own = flags.FLAGS.get_key_flags_for_module(registered)
  held = [flags.FLAGS[v.name] for v in vars(module).values() if isinstance(v, flags.FlagHolder)]
  for flag in [*own, *held, flags.FLAGS["verbose"]]:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main: Callable[[list[str]], Any], command: str) -> None:
  """Runs a command's main under absl (flags parsed, exit status set). An error the project raises on
  purpose ends it as `fail` says, unless --verbose or RECG_VERBOSE asks for its traceback; any other
  exception is a programming error and shows its traceback. `--help` prints the command module's
  docstring and its flags (describe_command), however the command was started."""
  verbose = verbose_flag()
  describe_command(main.__module__)

  def guarded(argv):
    try:
      return main(argv)
    except errors.RecgError as e:
      if verbose.value or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        raise
      fail(command, e)

  app.run(guarded)
