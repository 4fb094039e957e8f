"""Multi-host start-up: `jax.distributed.initialize` when the config asks for it."""

from absl import logging
import jax


def maybe_initialize(config) -> None:
  """Initializes JAX's multi-controller runtime if `config.distributed.enabled`.

  Coordinator address, process count and id come from the config when set, otherwise JAX
  detects them from the environment (TPU pods, SLURM, Open MPI).
  """
  dist = config.get('distributed')
  if not dist or not dist.get('enabled', False):
    return
  if dist.get('cpu_collectives'):
    jax.config.update('jax_cpu_collectives_implementation', dist.cpu_collectives)
  kwargs = {k: dist[k] for k in ('coordinator_address', 'num_processes', 'process_id')
            if dist.get(k) not in (None, '', -1)}
  logging.info('jax.distributed.initialize(%s)', kwargs)
  jax.distributed.initialize(**kwargs)
