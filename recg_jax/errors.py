"""Errors the project raises on purpose, shared by the stages that raise them."""


class NonFiniteLossError(FloatingPointError):
  """A training loss turned NaN or infinite; the last checkpoint on disk is the last good one."""
