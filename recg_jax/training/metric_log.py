"""A run's metric log: metrics.jsonl (one JSON object per log / eval event) and TensorBoard events."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from absl import logging
import numpy as np

from recg_jax import distributed
from recg_jax import paths


def _jsonable(v):
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    return float(v)
  return v


class MetricLog:
  """metrics.jsonl + tensorboardX. On resume, events after the restored step are dropped from both.

  Only the primary process writes; in the others the log is a no-op. A local file is appended to; a
  remote one (no append there) is rewritten whole after every evaluation, every _REMOTE_SYNC_S seconds of
  training records, and at close. TensorBoard events are written for local workdirs only.
  """

  _REMOTE_SYNC_S = 60.0

  def __init__(self, workdir: paths.Path, resume_step: int):
    self.path = paths.as_path(workdir) / "metrics.jsonl"
    self._file = self._tb = None
    self._lines: list[str] | None = None  # remote: every line, rewritten together
    self._synced = time.perf_counter()
    self.active = distributed.is_primary()
    if not self.active:
      return
    kept = []
    if self.path.exists():
      kept = [
          line
          for line in self.path.read_text().splitlines()
          if line.strip() and json.loads(line).get("step", 0) <= resume_step
      ]
    if paths.is_remote(self.path):
      self._lines = kept
      self._sync()
      logging.warning("workdir %s is remote: no TensorBoard events (metrics.jsonl has every value)", workdir)
      return
    self.path.write_text("".join(line + "\n" for line in kept))
    self._file = self.path.open("a", encoding="utf-8")
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top

      self._tb = tensorboardX.SummaryWriter(
          str(paths.as_path(workdir) / "tensorboard"), purge_step=resume_step if resume_step else None
      )
    except ImportError:  # TensorBoard events are optional; metrics.jsonl is always written
      logging.warning("tensorboardX is not installed: no TensorBoard events")

  def _sync(self) -> None:
    paths.write_text_atomic(self.path, "".join(line + "\n" for line in self._lines))
    self._synced = time.perf_counter()

  def write(self, kind: str, step: int, values: dict[str, Any], **extra) -> None:
    if not self.active:
      return
    record = {"kind": kind, "step": int(step), **extra, **{k: _jsonable(v) for k, v in values.items()}}
    if self._lines is not None:
      self._lines.append(json.dumps(record))
      if kind != "train" or time.perf_counter() - self._synced > self._REMOTE_SYNC_S:
        self._sync()
    else:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
          self._tb.add_scalar(tensorboard_tag(kind, k), float(v), int(step))

  def close(self) -> None:
    if self._lines is not None:
      self._sync()
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def tensorboard_tag(kind: str, key: str) -> str:
  """'valid', 'valid/full/ndcg@10' -> 'valid/full/ndcg_at_10': one kind prefix, no '@' (TensorBoard rejects
  it and renames the tag with a log line per metric)."""
  tag = key if key.startswith(f"{kind}/") else f"{kind}/{key}"
  return tag.replace("@", "_at_")
