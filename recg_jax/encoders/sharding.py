"""FSDP-style parameter sharding for frozen encoders too big for one device.

Every large array is split along one axis over the mesh's `data` axis, and small ones (norms, biases)
are replicated. Under `jax.jit`, XLA gathers each weight where it is used, so the forward pass is the same
function as unsharded; only the memory per device drops (by the mesh size, for the big matrices).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

DATA_AXIS = "data"
# Arrays with fewer elements than this are replicated: splitting them saves little and costs a gather.
DEFAULT_MIN_SIZE = 1 << 16


def shard_axis(shape: tuple[int, ...], num_shards: int, min_size: int = DEFAULT_MIN_SIZE) -> int | None:
  """The axis to split an array of `shape` over `num_shards` devices, or None to replicate it.

  The largest axis that `num_shards` divides; on a tie, the later axis (so the stacked-layer axis of a
  scanned parameter, which comes first, is not split when a feature axis is as large).
  """
  if num_shards <= 1 or not shape or int(np.prod(shape)) < min_size:
    return None
  divisible = [
      (size, axis) for axis, size in enumerate(shape) if size % num_shards == 0 and size >= num_shards
  ]
  if not divisible:
    return None
  return max(divisible)[1]


def param_sharding(
    params: Any, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE, axis_name: str = DATA_AXIS
) -> Any:
  """A pytree of NamedSharding matching `params`: big arrays split over `axis_name`, small ones replicated.

  Args:
    params: pytree of arrays (numpy or jax), e.g. `llama.build(...)[1]`.
    mesh: a mesh with an axis named `axis_name`.
    min_size: arrays with fewer elements are replicated.
    axis_name: the mesh axis to split over.
  """
  if axis_name not in mesh.axis_names:
    raise ValueError(f"param_sharding: mesh axes {mesh.axis_names} have no {axis_name!r} axis")
  num_shards = mesh.shape[axis_name]

  def one(leaf) -> NamedSharding:
    shape = tuple(np.shape(leaf))
    axis = shard_axis(shape, num_shards, min_size)
    if axis is None:
      return NamedSharding(mesh, PartitionSpec())
    spec = [None] * len(shape)
    spec[axis] = axis_name
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map(one, params)


def shard_params(
    params: Any, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE, axis_name: str = DATA_AXIS
) -> Any:
  """Places `params` on the mesh with `param_sharding` (host arrays go straight to their shards)."""
  return jax.device_put(params, param_sharding(params, mesh, min_size, axis_name))
