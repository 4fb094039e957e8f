"""The device mesh: one `data` axis over every device of every process, and how batches and
parameters are placed on it and fetched back.

One device is a mesh of size one, so more devices or hosts are a launch change only.
"""

from typing import Any, Dict

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from wysiwyc import errors


Batch = Dict[str, np.ndarray]


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name `data`.

  Auto axis types: the compiler propagates shardings (reshapes inside the models need no
  annotations); the explicit in/out shardings of the jitted steps pin down the layout.
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(batch_size: int, mesh: Mesh, what: str, micro_batches: int = 1) -> None:
  """Refuses a global batch that does not split evenly over devices, processes and the
  `micro_batches` of gradient accumulation."""
  devices, processes = mesh.devices.size, jax.process_count()
  if micro_batches < 1:
    raise errors.UserError(f'grad_accum_steps = {micro_batches}; it must be 1 or more.')
  if batch_size % (devices * micro_batches) or batch_size % processes:
    accum = f' x {micro_batches} micro-batches' if micro_batches > 1 else ''
    raise errors.UserError(f'{what} = {batch_size} does not divide over {devices} devices in '
                     f'{processes} processes{accum}; set it to a multiple of '
                     f'{devices * micro_batches}.')


def shard_batch(batch: Batch, mesh: Mesh) -> Dict[str, jax.Array]:
  """Assembles per-process numpy batches into global arrays sharded along `data`."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def fetch_global(tree: Any) -> Any:
  """Global arrays -> numpy arrays of the whole global batch, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_block(mesh: Mesh) -> int:
  """Which of `jax.process_count()` equal contiguous blocks of every global batch this process
  feeds: where `shard_batch` puts its rows (its devices' place on the `data` axis)."""
  places = [i for i, device in enumerate(mesh.devices.flat)
            if device.process_index == jax.process_index()]
  size = mesh.devices.size // jax.process_count()
  if places != list(range(places[0], places[0] + size)) or places[0] % size:
    raise ValueError(f'Process {jax.process_index()} holds places {places} of the mesh, not one '
                     f'block of {size} consecutive places.')
  return places[0] // size
