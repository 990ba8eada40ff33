"""Errors the project raises on purpose, and what the command lines do with them.

Every error a user can cause and fix (bad input data, a config field the code cannot use, a checkpoint or
encoder that does not fit, a folder that is not a finished run, a failed download, a diverging run)
derives from RecgError: a command prints its message as one line (what failed, and what to do) and exits
with status 1, without a traceback unless asked for one (`--verbose`, or RECG_VERBOSE=1). Any other
exception is a programming error and shows its traceback as usual.
"""


class RecgError(Exception):
  """An error the project raises on purpose; its message says what failed and what to do."""


class ConfigError(RecgError, ValueError):
  """A config field (or command-line flag) holds a value the project cannot use; the message names it."""


class RunStateError(RecgError, ValueError):
  """A workdir holds what another run wrote (a checkpoint, a finished run under another config), or state
  that cannot be resumed; the message says which folder to start afresh."""


class NotAFinishedRunError(RecgError, ValueError):
  """A workdir does not hold what a finished run leaves (results.json, a best checkpoint, its transfer)."""


class NonFiniteError(RecgError, FloatingPointError):
  """A model produced NaN or infinite values (vectors, scores)."""


class NonFiniteLossError(NonFiniteError):
  """A training loss turned NaN or infinite; the last checkpoint on disk is the last good one."""
