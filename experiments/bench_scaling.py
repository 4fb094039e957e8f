r"""Explainer train-step throughput (images/s) on 1, 2, 4, 8 devices for one fixed global batch.

  python experiments/bench_scaling.py --config=configs/synthetic.py --devices=1,2,4,8
  python experiments/bench_scaling.py --platform=gpu --devices=1,2,4,8   # real GPUs

Each device count runs in its own process (JAX fixes its devices when it starts): on CPU with
that many simulated devices (`--xla_force_host_platform_device_count`), which share the host's
cores, so CPU numbers measure the overhead of splitting a step, not a speed-up; on GPU over the
first N GPUs. The step is the one `train_steps.py` jits (explicit shardings, donated state), timed
after compilation on random data. Prints a Markdown table. Override model sizes, the global
batch, `compute_dtype` or `grad_accum_steps` through `--config.*` flags.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Experiment config.')
flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts to compare.')
flags.DEFINE_integer('steps', 10, 'Timed steps per device count (after one compile step).')
flags.DEFINE_enum('platform', 'cpu', ['cpu', 'gpu', 'tpu'], 'Where to run the steps.')
flags.DEFINE_integer('worker_devices', 0, 'Internal: run one device count in this process.')

RESULT_PREFIX = 'RESULT '


def time_explainer_step(config, num_devices: int, steps: int) -> dict:
  """Seconds per jitted explainer step on a mesh of the first `num_devices` devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from wysiwyc import data_parallel  # pylint: disable=g-import-not-at-top
  from wysiwyc import model_setup  # pylint: disable=g-import-not-at-top
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:num_devices]
  if len(devices) < num_devices:
    raise app.UsageError(f'Asked for {num_devices} devices; this host has {jax.devices()}.')
  mesh = Mesh(np.asarray(devices), ('data',))
  size, num_classes = config.data.image_size, config.data.synthetic.num_classes
  spec = pipeline.DataSpec(name='bench', class_names=tuple(map(str, range(num_classes))),
                           image_size=size, multilabel=True, num_examples={})
  tc = config.explainer.train
  micro_batches = tc.get('grad_accum_steps', 1)
  data_parallel.check_batch_size(tc.batch_size, mesh, 'explainer.train.batch_size', micro_batches)
  rng = jax.random.key(0)
  classifier = model_setup.build_classifier(config, spec)
  explainer = model_setup.build_explainer(config, spec)
  classifier_variables = data_parallel.replicate(train_steps.init_state(
      classifier, train_steps.make_optimizer(config.classifier.train), rng, size).variables(), mesh)
  tx = train_steps.make_optimizer(tc)
  state = data_parallel.replicate(train_steps.init_state(explainer, tx, rng, size), mesh)
  loss_fn = train_steps.explainer_loss_fn(config, True)
  step = train_steps.jit_train_step(
      train_steps.make_explainer_train_step(explainer, classifier, tx, loss_fn, micro_batches),
      mesh, 1)
  data = np.random.default_rng(0)
  batch = data_parallel.shard_batch({
      'image': data.normal(size=(tc.batch_size, size, size, 3)).astype(np.float32),
      'labels': (data.random((tc.batch_size, num_classes)) < 0.3).astype(np.float32)}, mesh)
  start = time.perf_counter()
  state, aux = step(state, classifier_variables, batch, rng)
  jax.block_until_ready(aux)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, aux = step(state, classifier_variables, batch, rng)
  jax.block_until_ready((state, aux))
  seconds = (time.perf_counter() - start) / steps
  assert bool(jnp.isfinite(aux['loss']))
  return {'devices': num_devices, 'platform': devices[0].platform,
          'device_kind': devices[0].device_kind, 'batch_size': tc.batch_size,
          'seconds_per_step': seconds, 'images_per_second': tc.batch_size / seconds,
          'first_step_seconds': compile_seconds}


def run_worker(num_devices: int) -> dict:
  """Runs this script for one device count in a fresh process; its result line, parsed."""
  env = dict(os.environ)
  if FLAGS.platform == 'cpu':
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={num_devices}').strip()
    env['JAX_PLATFORMS'] = 'cpu'
  config_args = [a for a in sys.argv[1:] if a.startswith('--config')]
  command = [sys.executable, os.path.abspath(__file__), f'--worker_devices={num_devices}',
             f'--steps={FLAGS.steps}', f'--platform={FLAGS.platform}'] + config_args
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in result.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  if result.returncode or not lines:
    raise RuntimeError(f'{num_devices} devices failed:\n{result.stderr[-3000:]}')
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def markdown_table(rows) -> str:
  base = rows[0]['images_per_second']
  lines = ['| devices | platform | global batch | s/step | images/s | vs first row |',
           '|---:|---|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['devices']} | {r['platform']} ({r['device_kind']}) | {r['batch_size']} "
                 f"| {r['seconds_per_step']:.4f} | {r['images_per_second']:.1f} "
                 f"| {r['images_per_second'] / base:.2f}x |")
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.worker_devices:
    from wysiwyc import runtime  # pylint: disable=g-import-not-at-top
    runtime.use_compilation_cache()
    result = time_explainer_step(FLAGS.config, FLAGS.worker_devices, FLAGS.steps)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return
  rows = []
  for count in map(int, FLAGS.devices):
    rows.append(run_worker(count))
    print(f"{count} device(s): {rows[-1]['images_per_second']:.1f} images/s", file=sys.stderr)
  print(f'Explainer train step, {FLAGS.steps} timed steps after compilation, '
        f'compute_dtype={FLAGS.config.get("compute_dtype", "float32")}, '
        f'grad_accum_steps={FLAGS.config.explainer.train.get("grad_accum_steps", 1)}:\n')
  print(markdown_table(rows))


if __name__ == '__main__':
  app.run(main)
