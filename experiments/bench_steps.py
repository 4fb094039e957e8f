r"""Times the jitted classifier and explainer train steps (after compilation) on random data.

  python experiments/bench_steps.py --config=configs/synthetic.py --steps=10

Prints images/s and seconds per step for each stage: how the budget of the main job is spent.
Override model sizes with --config.classifier.kwargs.width=16 etc.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import data_parallel
from wysiwyc import model_setup
from wysiwyc import train_steps
from wysiwyc.data import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Experiment config.')
flags.DEFINE_integer('steps', 10, 'Timed steps per stage (after one compile step).')


def random_batch(batch_size, size, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((batch_size, num_classes)) < 0.3).astype(np.float32)
  return {'image': rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
          'labels': labels}


def time_steps(step, state, batch, steps):
  state, out = step(state, batch)
  jax.block_until_ready(out)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  wall = (time.perf_counter() - start) / steps
  cpu = (time.process_time() - cpu_start) / steps
  print(f'  (CPU time {cpu:.3f} s/step over {steps} steps; wall {wall:.3f} s/step)')
  return wall


def main(argv):
  del argv
  config = FLAGS.config
  size, num_classes = config.data.image_size, config.data.synthetic.num_classes
  spec = pipeline.DataSpec(name='bench', class_names=tuple(map(str, range(num_classes))),
                           image_size=size, multilabel=True, num_examples={})
  mesh = data_parallel.create_mesh()
  rng = jax.random.key(0)
  classifier = model_setup.build_classifier(config, spec)
  c_tx = train_steps.make_optimizer(config.classifier.train)
  c_state = data_parallel.replicate(train_steps.init_state(classifier, c_tx, rng, size), mesh)
  c_step = train_steps.jit_train_step(
      train_steps.make_classifier_train_step(classifier, c_tx, True), mesh)
  bs = config.classifier.train.batch_size
  c_batch = data_parallel.shard_batch(random_batch(bs, size, num_classes), mesh)
  c_frozen = jax.tree.map(jnp.copy, c_state.variables())  # c_state is donated below
  seconds = time_steps(lambda s, b: c_step(s, b, rng), c_state, c_batch, FLAGS.steps)
  print(f'classifier  batch {bs:4d}: {seconds:.3f} s/step, {bs / seconds:7.1f} images/s')

  explainer = model_setup.build_explainer(config, spec)
  e_tx = train_steps.make_optimizer(config.explainer.train)
  e_state = data_parallel.replicate(train_steps.init_state(explainer, e_tx, rng, size), mesh)
  e_step = train_steps.jit_train_step(train_steps.make_explainer_train_step(
      explainer, classifier, e_tx, train_steps.explainer_loss_fn(config, True)), mesh, 1)
  bs = config.explainer.train.batch_size
  e_batch = data_parallel.shard_batch(random_batch(bs, size, num_classes), mesh)
  seconds = time_steps(lambda s, b: e_step(s, c_frozen, b, rng), e_state, e_batch, FLAGS.steps)
  print(f'explainer   batch {bs:4d}: {seconds:.3f} s/step, {bs / seconds:7.1f} images/s')


if __name__ == '__main__':
  app.run(main)
