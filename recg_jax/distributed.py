"""Several processes, one program: what each process does, and what only one of them does.

JAX runs one process per host (a TPU VM, a GPU node, or a local CPU process in tests), joined by
`jax.distributed.initialize`. Every process runs the same Python program; the global `Mesh` over all
devices of all processes is JAX's own. What this module adds is the project's division of labour:

- Training: every process builds only its own rows of each global batch (the epoch plan is a pure
  function of the seed, so each knows which rows those are) and `global_batch` joins them with
  `jax.make_array_from_process_local_data`. Parameters and optimiser state are replicated.
- Embedding: each process encodes its share of a domain's items (`process_share`); `gather_rows` joins
  them, and the primary process writes the one cache.
- Evaluation: each process ranks its share of the users on its own devices; `sum_over_processes` adds up
  the per-user results, so every process holds every user's rank and computes the same metrics.
- Files: only the primary process (index 0) writes results, logs, TensorBoard events, caches and plots;
  the others wait at a `barrier` where they need what it wrote. Orbax checkpoints are saved and restored
  by every process, as orbax requires.

With one process every function here is the identity or a no-op.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from recg_jax import errors


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """jax.distributed.initialize, with CPU collectives switched on for CPU-only processes.

  TPU pods and Slurm clusters need no arguments (JAX discovers them); local or other clusters pass all
  three. CPU processes exchange arrays through gloo, which JAX leaves off by default.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise errors.ConfigError(
        "--coordinator_address, --num_processes and --process_id go together: give all three "
        "(a local or unmanaged cluster) or none (TPU pods and Slurm are discovered)"
    )
  # Only the CPU client reads this; accelerator collectives (NCCL, ICI) are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def is_primary() -> bool:
  """True in the process that writes files (process 0)."""
  return jax.process_index() == 0


def say(message: str) -> None:
  """Console output a user reads (stage lines, tables): printed by the primary process only, so that a run
  of several processes prints it once."""
  if is_primary():
    print(message, flush=True)


def multi() -> bool:
  return jax.process_count() > 1


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op with one process)."""
  if multi():
    multihost_utils.sync_global_devices(name)


def check_batch_size(batch_size: int, field: str = "train.batch_size") -> None:
  """Each process contributes batch_size / process_count rows of every global batch."""
  count = jax.process_count()
  if batch_size % count:
    raise errors.ConfigError(
        f"config.{field}={batch_size} is not a multiple of the number of processes ({count}): "
        "every process must contribute an equal share of each global batch"
    )


def process_share(num: int, index: int | None = None) -> slice:
  """Process `index`'s (default: this one's) contiguous block of `num` things (items, users), in process
  order; block sizes differ by at most one, so with num >= process_count none is empty."""
  count = jax.process_count()
  index = jax.process_index() if index is None else index
  return slice(index * num // count, (index + 1) * num // count)


def local_rows(global_size: int) -> slice:
  """The rows of a global batch of `global_size` that this process supplies (its devices' block)."""
  check_batch_size(global_size, "batch size")
  per = global_size // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(
    local: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding, axis: int
) -> dict[str, jax.Array]:
  """One global array per entry from this process's rows (`local_rows`) along `axis`."""
  out = {}
  for k, v in local.items():
    shape = list(v.shape)
    shape[axis] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(shape))
  return out


def gather_rows(local_NxD: np.ndarray, total: int) -> np.ndarray:
  """Concatenates every process's `process_share(total)` block, in process order, on every process."""
  if not multi():
    return local_NxD
  per = -(-total // jax.process_count())  # every block padded to one size for the all-gather
  padded = np.zeros((per,) + local_NxD.shape[1:], local_NxD.dtype)
  padded[: len(local_NxD)] = local_NxD
  blocks = np.asarray(multihost_utils.process_allgather(padded))  # [processes, per, ...]
  sizes = [process_share(total, i).stop - process_share(total, i).start for i in range(len(blocks))]
  return np.concatenate([block[:size] for block, size in zip(blocks, sizes)])


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """The elementwise sum of `x` over processes, on every process."""
  if not multi():
    return x
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0).astype(x.dtype)


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """jax.device_put onto a sharding that may span every process's devices.

  Every process passes the same values. Across processes device_put accepts host values only, so arrays
  go through the host (PRNG keys as their key data).
  """
  if not multi():
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)

  return jax.tree.map(one, tree)


def host_copy(tree: Any) -> Any:
  """Host numpy copies of (replicated) arrays that span several processes, for local computations
  such as evaluation; with one process the tree is returned as it is."""
  if not multi():
    return tree
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, tree)


def local_mesh() -> jax.sharding.Mesh:
  """This process's devices on one 'data' axis (evaluation shards its users over them)."""
  return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
