r"""Trains the synthetic-shapes classifier that the package ships as a zoo entry.

  python experiments/train_zoo_classifier.py --config=configs/synthetic.py:scratch \
      --workdir=workdirs/zoo_classifier --name=synthetic_shapes_cnn

Trains `config.classifier` from scratch on the config's data (the classifier stage of the main
job, with its early stopping and checkpoints in `--workdir`), measures per-class accuracy on the
validation and test splits, and writes `<name>.msgpack` (the variables) and `<name>.json` (what
they are: model, data set version and parameters, class names, accuracies, this command) into
`--output_dir`, the package's weight folder by default. A config then explains it with
`--config.classifier.checkpoint=zoo:<name>` (the default of configs/synthetic.py).
"""

import os

from absl import app
from absl import flags
from absl import logging
import flax
import jax
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import data_parallel
from wysiwyc import loop
from wysiwyc import run_setup
from wysiwyc import stages
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import pipeline
from wysiwyc.models import shipped

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py:scratch',
                                'Config whose classifier and data to train.')
flags.DEFINE_string('workdir', None, 'Folder for the training checkpoints and logs.')
flags.DEFINE_string('name', 'synthetic_shapes_cnn', 'Name of the zoo entry.')
flags.DEFINE_string('output_dir', shipped.WEIGHTS_DIR, 'Where <name>.msgpack/.json go.')
flags.mark_flag_as_required('workdir')


def split_accuracy(config, spec, mesh, classifier, variables, split: str) -> float:
  """Mean per-class accuracy of the classifier on one split (plain images)."""
  eval_step = train_steps.jit_eval_step(
      train_steps.make_classifier_eval_step(classifier, spec.multilabel), mesh)
  batches = pipeline.as_numpy(pipeline.make_dataset(
      config.data, split, config.eval.batch_size, training=False, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()))
  return float(loop.evaluate(eval_step, variables, batches, mesh)['accuracy'])


def main(argv):
  del argv
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  config = FLAGS.config
  if config.classifier.get('checkpoint', ''):
    raise app.UsageError('The zoo classifier is trained from scratch: use a config whose '
                         "classifier.checkpoint is '' (e.g. configs/synthetic.py:scratch).")
  mesh = data_parallel.create_mesh()
  spec = train.prepare_data(config.data)
  run_setup.write_workdir_description(config, spec, FLAGS.workdir)
  classifier, variables = stages.classifier_stage(
      config, spec, FLAGS.workdir, mesh, jax.random.fold_in(jax.random.key(config.seed), 1))
  accuracy = {split: split_accuracy(config, spec, mesh, classifier, variables, split)
              for split in ('validation', 'test')}
  logging.info('Per-class accuracy: %s', accuracy)
  print(f'per-class accuracy: validation {accuracy["validation"]:.4f}, '
        f'test {accuracy["test"]:.4f}')
  payload = flax.serialization.msgpack_serialize(
      jax.tree.map(lambda x: jax.device_get(x), data_parallel.fetch_global(variables)))
  metadata = {
      'name': FLAGS.name,
      'classifier': {'name': config.classifier.name,
                     'kwargs': config.classifier.kwargs.to_dict()},
      'class_names': list(spec.class_names),
      'per_class_accuracy': accuracy,
      'classifier_train': config.classifier.train.to_dict(),
      **shipped.provenance(config, variables, payload),
  }
  shipped.write_entry(FLAGS.output_dir, FLAGS.name, payload, metadata)
  print(f'wrote {os.path.join(FLAGS.output_dir, FLAGS.name)}.msgpack/.json')


if __name__ == '__main__':
  app.run(main)
