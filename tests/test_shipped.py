"""The classifier zoo shipped in the package (wysiwyc/models/shipped.py)."""

import json
import logging
import os
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import load_config
from wysiwyc import errors
from wysiwyc import model_setup
from wysiwyc import train
from wysiwyc import train_steps
from wysiwyc.data import pipeline
from wysiwyc.data import synthetic
from wysiwyc.models import classifiers
from wysiwyc.models import shipped

DEFAULT_ENTRY = 'synthetic_shapes_cnn'
DEFAULT_EXPLAINER_START = 'synthetic_shapes_unet'


def write_untrained_entry(tmp_path, name: str, kind: str, model, model_config, data_config):
  """Writes zoo entry `name` of `kind` ('classifier' or 'explainer') with `model`'s initial
  variables; returns them."""
  import hashlib
  variables = jax.device_get(dict(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  payload = flax.serialization.msgpack_serialize(variables)
  metadata = {'name': name, kind: {'name': model_config.name,
                                   'kwargs': model_config.kwargs.to_dict()},
              'dataset': shipped.dataset_identity(data_config),
              'class_names': list(synthetic.SHAPE_NAMES[:6]),
              'sha256': hashlib.sha256(payload).hexdigest()}
  shipped.write_entry(str(tmp_path), name, payload, metadata)
  return variables


def small_entry(tmp_path, config):
  """Writes a zoo entry 'tiny' of an untrained classifier for `config`; returns its variables."""
  model = classifiers.build(config.classifier.name, 6, **config.classifier.kwargs)
  return write_untrained_entry(tmp_path, 'tiny', 'classifier', model, config.classifier,
                               config.data)


def test_entry_round_trips_and_damage_is_reported(tmp_path):
  config = load_config('synthetic')
  variables = small_entry(tmp_path, config)
  assert shipped.available(str(tmp_path)) == ('tiny',)
  zeros = jax.tree.map(np.zeros_like, variables)
  loaded = shipped.load('tiny', zeros, str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  with open(tmp_path / 'tiny.msgpack', 'r+b') as f:  # flip one byte
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(errors.UserError, match='sha256'):
    shipped.load('tiny', zeros, str(tmp_path))
  with pytest.raises(errors.UserError, match="No zoo entry 'nope'.*Shipped: tiny"):
    shipped.read_metadata('nope', str(tmp_path))


def test_incompatible_config_is_refused_and_other_data_only_warned(tmp_path, caplog):
  config = load_config('synthetic')
  small_entry(tmp_path, config)
  metadata = shipped.read_metadata('tiny', str(tmp_path))
  names = synthetic.SHAPE_NAMES[:6]
  shipped.check_compatible(metadata, config, names)  # fits
  wider = load_config('synthetic')
  wider.classifier.kwargs.width = 32
  with pytest.raises(errors.UserError, match='classifier.kwargs'):
    shipped.check_compatible(metadata, wider, names)
  with pytest.raises(errors.UserError, match='class names'):
    shipped.check_compatible(metadata, config, names[:5])
  more_images = load_config('synthetic')
  more_images.data.synthetic.num_train = 123  # split sizes do not matter
  other_texture = load_config('synthetic')
  other_texture.data.synthetic.texture_strength = 0.1
  with caplog.at_level(logging.WARNING):
    shipped.check_compatible(metadata, more_images, names)
    assert 'trained on synthetic data with other' not in caplog.text
    shipped.check_compatible(metadata, other_texture, names)
    assert 'texture_strength' in caplog.text


def test_default_config_names_a_shipped_entry_that_fits_it():
  config = load_config('synthetic')
  assert config.classifier.checkpoint == shipped.PREFIX + DEFAULT_ENTRY
  assert DEFAULT_ENTRY in shipped.available()
  metadata = shipped.read_metadata(DEFAULT_ENTRY)
  shipped.check_compatible(metadata, config, synthetic.SHAPE_NAMES[:6])
  # The same generator and version; the zoo entry saw a larger training split.
  identity = shipped.dataset_identity(config.data)
  for key in ('builder', 'version', 'image_size'):
    assert metadata['dataset'][key] == identity[key], key
  split_sizes = ('num_train', 'num_validation', 'num_test')
  strip = lambda generation: {k: v for k, v in generation.items() if k not in split_sizes}
  assert strip(metadata['dataset']['generation']) == strip(identity['generation'])
  assert metadata['per_class_accuracy']['test'] >= 0.95
  assert 'experiments/train_zoo_classifier.py' in metadata['command']


def test_shipped_classifier_is_as_accurate_as_recorded():
  """Recomputes the accuracy on test images drawn here (not read from the TFDS files)."""
  config = load_config('synthetic')
  params = synthetic.SyntheticParams.from_config(config.data.synthetic)
  examples = [synthetic.generate_example(params, 'test', i) for i in range(128)]
  images = np.stack([e['image'] for e in examples]).astype(np.float32) / 255.0
  images = (images - np.asarray(pipeline.IMAGENET_MEAN)) / np.asarray(pipeline.IMAGENET_STD)
  labels = np.stack([e['labels'] for e in examples])
  model = classifiers.build(config.classifier.name, 6, **config.classifier.kwargs)
  target = jax.device_get(dict(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  variables = shipped.load(DEFAULT_ENTRY, target)
  logits = model.apply(variables, jnp.asarray(images, jnp.float32))
  accuracy = float(train_steps.per_class_accuracy(logits, labels, True).mean())
  recorded = shipped.read_metadata(DEFAULT_ENTRY)['per_class_accuracy']['test']
  assert accuracy >= 0.93
  assert abs(accuracy - recorded) < 0.03


def test_metadata_file_is_plain_json():
  with open(os.path.join(shipped.WEIGHTS_DIR, DEFAULT_ENTRY + '.json')) as f:
    metadata = json.load(f)
  assert metadata['dataset']['builder'] == 'synthetic_shapes'
  assert metadata['num_params'] > 0


def test_main_job_uses_both_shipped_entries_and_scratch_is_one_switch(tmp_path):
  config = load_config('synthetic')
  config.data.data_dir = str(tmp_path / 'tfds')
  synthetic_config = config.data.synthetic
  synthetic_config.num_train, synthetic_config.num_validation = 32, 16
  synthetic_config.num_test = 32
  config.explainer.train.update(batch_size=16, max_steps=2, warmup_steps=0, decay_steps=2)
  config.eval.num_figure_images = 2
  results = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  # The zoo classifier was used as is (no classifier training), and it is accurate here too.
  assert not os.path.exists(tmp_path / 'workdir' / 'classifier' / 'checkpoints')
  assert results['classifier']['accuracy_plain'] >= 0.9
  # Two steps from the shipped start already give class-specific masks (from random weights:
  # one shared map, other/own near 1).
  assert results['explainer']['specificity_other_over_own'] < 0.5
  scratch = load_config('synthetic', 'scratch')
  assert scratch.classifier.checkpoint == ''
  assert scratch.classifier.train.object_masking == 0.5  # the zoo entry's recipe


def test_default_config_starts_the_explainer_from_a_shipped_entry_that_fits_it():
  config = load_config('synthetic')
  assert config.explainer.init_from == shipped.PREFIX + DEFAULT_EXPLAINER_START
  metadata = shipped.read_metadata(DEFAULT_EXPLAINER_START)
  shipped.check_explainer_compatible(metadata, config, synthetic.SHAPE_NAMES[:6])
  assert metadata['supervision'] == 'class labels only, no masks'
  assert metadata['mode'] == 'self_explainer'
  assert 'experiments/train_zoo_explainer.py' in metadata['command']
  spec = types.SimpleNamespace(class_names=synthetic.SHAPE_NAMES[:6])
  model = model_setup.build_explainer(config, spec)
  target = jax.device_get(dict(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  loaded = shipped.load(DEFAULT_EXPLAINER_START, target)
  assert metadata['num_params'] == sum(x.size for x in jax.tree.leaves(loaded['params']))


def small_explainer_entry(tmp_path, config):
  """Writes an explainer-start entry 'tiny_unet' of an untrained U-Net for `config`."""
  model = model_setup.build_explainer(config, types.SimpleNamespace(class_names=range(6)))
  return write_untrained_entry(tmp_path, 'tiny_unet', 'explainer', model, config.explainer,
                               config.data)


def test_explainer_entry_is_checked_against_the_explainer_and_not_taken_for_a_classifier(
    tmp_path):
  config = load_config('synthetic')
  small_explainer_entry(tmp_path, config)
  small_entry(tmp_path, config)
  names = synthetic.SHAPE_NAMES[:6]
  explainer_entry = shipped.read_metadata('tiny_unet', str(tmp_path))
  shipped.check_explainer_compatible(explainer_entry, config, names)  # fits
  rescaled = load_config('synthetic')
  rescaled.explainer.kwargs.logit_scale = 10.0  # changes no variable
  shipped.check_explainer_compatible(explainer_entry, rescaled, names)
  guided = load_config('synthetic')
  guided.explainer.kwargs.update(upsample='guided', guide_radius=1, guide_eps=0.5)  # neither
  shipped.check_explainer_compatible(explainer_entry, guided, names)
  wider = load_config('synthetic')
  wider.explainer.kwargs.width = 32
  with pytest.raises(errors.UserError, match='explainer.kwargs'):
    shipped.check_explainer_compatible(explainer_entry, wider, names)
  with pytest.raises(errors.UserError, match='not a classifier'):
    shipped.check_compatible(explainer_entry, config, names)
  with pytest.raises(errors.UserError, match='not an explainer start'):
    shipped.check_explainer_compatible(shipped.read_metadata('tiny', str(tmp_path)), config,
                                       names)
