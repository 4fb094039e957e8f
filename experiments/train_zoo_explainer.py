r"""Trains the U-Net that the package ships as the synthetic Explainer's starting weights.

  python experiments/train_zoo_explainer.py --config=configs/synthetic_self_explainer.py \
      --workdir=workdirs/zoo_explainer --name=synthetic_shapes_unet

The authors' Explainer (torchvision's DeepLabV3-ResNet50) starts from a backbone pretrained to
classify ImageNet: features that tell the classes apart are there before the Explainer's loss
shapes the masks. There is no ImageNet for the synthetic shapes, so this script makes the
analog from the synthetic training labels alone (no masks): it runs the config's main job (the
self-explaining classifier of configs/synthetic_self_explainer.py by default; a finished
`--workdir` is reused), then writes its explainer variables as `<name>.msgpack` and what they are
(model, data set version, the run's test results, this command) as `<name>.json` into
`--output_dir`, the package's weight folder by default. A config starts its Explainer from them
with `--config.explainer.init_from=zoo:<name>` (the default of configs/synthetic.py).
"""

import json
import os
import types

from absl import app
from absl import flags
import flax
import jax
from ml_collections import config_flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import model_setup
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.models import shipped

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic_self_explainer.py',
                                'Config whose explainer network to train and ship.')
flags.DEFINE_string('workdir', None, 'Folder of the training run (reused when finished).')
flags.DEFINE_string('name', 'synthetic_shapes_unet', 'Name of the zoo entry.')
flags.DEFINE_string('output_dir', shipped.WEIGHTS_DIR, 'Where <name>.msgpack/.json go.')
flags.mark_flag_as_required('workdir')


def trained_explainer_variables(config, class_names, workdir: str) -> dict:
  """The {'params', 'batch_stats'} of `workdir`'s explainer/best, for `config`'s explainer."""
  explainer = model_setup.build_explainer(config, types.SimpleNamespace(class_names=class_names))
  state = train_steps.init_state(explainer, train_steps.make_optimizer(config.explainer.train),
                                 jax.random.key(0), config.data.image_size)
  target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  restored = model_setup.restore_stage_variables(workdir, 'explainer', target)
  if restored is None:
    raise app.UsageError(f'{workdir} has no explainer/best to ship.')
  return restored


def main(argv):
  del argv
  runtime.quiet_library_logs()
  runtime.use_compilation_cache()
  config = FLAGS.config
  results = train.train_and_evaluate(config, FLAGS.workdir)
  with open(os.path.join(FLAGS.workdir, 'spec.json')) as f:
    class_names = json.load(f)['class_names']
  variables = trained_explainer_variables(config, class_names, FLAGS.workdir)
  payload = flax.serialization.msgpack_serialize(variables)
  metadata = {
      'name': FLAGS.name,
      'explainer': {'name': config.explainer.name, 'kwargs': config.explainer.kwargs.to_dict()},
      'mode': config.get('mode', 'explainer'),
      'supervision': 'class labels only, no masks' if config.get('mode') == 'self_explainer'
                     else 'the Explainer loss against the classifier of the run',
      'class_names': list(class_names),
      # Test split of the run that made them (for a self-explainer: its own classification and
      # masks).
      'test_results': {'classifier': results['classifier'], 'explainer': results['explainer']},
      'explainer_train': config.explainer.train.to_dict(),
      'loss': config.loss.to_dict(),
      **shipped.provenance(config, variables, payload),
  }
  shipped.write_entry(FLAGS.output_dir, FLAGS.name, payload, metadata)
  print(f'wrote {os.path.join(FLAGS.output_dir, FLAGS.name)}.msgpack/.json')


if __name__ == '__main__':
  app.run(main)
