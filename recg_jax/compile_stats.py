"""How many XLA programs this process compiled, and how long that took.

A grid is fast when its runs reuse compiled programs instead of compiling their own. This module counts
what JAX reports through `jax.monitoring`: one backend-compile event per program it had to produce
(compiled by XLA, or loaded from the persistent compilation cache, with the seconds either took) and one
event per persistent-cache hit, so a runner can report compiles per run and per grid.

  compile_stats.install()          # idempotent; call once before the work to measure
  before = compile_stats.snapshot()
  ...
  compile_stats.since(before)      # {'programs': n, 'cache_hits': n, 'compiles': n, 'compile_s': s}

programs = compiles + cache_hits; compile_s counts both. A program already in memory (a jitted function
called again with the same shapes) is none of these.

TRACE_COUNTS counts the traces of the project's own jitted functions ('train_step', 'user_fn'): a Python
side effect inside the traced function runs once per trace, never per call, so a retrace per batch
would show up there (tests assert one trace per run and input width).
"""

from __future__ import annotations

import collections
import threading

import jax

# Event names of jax._src.dispatch / jax._src.compiler (stable since jax 0.4.2x).
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"

TRACE_COUNTS: collections.Counter = collections.Counter()

_lock = threading.Lock()
_totals = {"programs": 0, "compile_s": 0.0, "cache_hits": 0}
_installed = False


def _on_duration(event: str, duration_secs: float, **_) -> None:
  if event == _BACKEND_COMPILE:
    with _lock:
      _totals["programs"] += 1
      _totals["compile_s"] += float(duration_secs)


def _on_event(event: str, **_) -> None:
  if event == _CACHE_HIT:
    with _lock:
      _totals["cache_hits"] += 1


def install() -> None:
  """Registers the listeners (once per process)."""
  global _installed
  with _lock:
    if _installed:
      return
    _installed = True
  jax.monitoring.register_event_duration_secs_listener(_on_duration)
  jax.monitoring.register_event_listener(_on_event)


def snapshot() -> dict[str, float]:
  """The process totals so far (install() first, or every count stays 0)."""
  with _lock:
    out = dict(_totals)
  out["compiles"] = out["programs"] - out["cache_hits"]
  return out


def since(before: dict[str, float]) -> dict[str, float]:
  """Totals accumulated after `before` (a snapshot())."""
  now = snapshot()
  out = {k: now[k] - before.get(k, 0) for k in now}
  out["compile_s"] = round(out["compile_s"], 3)
  return out
