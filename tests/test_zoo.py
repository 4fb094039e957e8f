"""VGG-16 and ResNet-50 from the model zoo: architecture sizes, ImageNet weights read from
flaxmodels' file layout in a local ckpt_dir with no network, the frozen-backbone optimizer."""

import os

import flax
import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.model_helpers import num_params, random_variables, variable_shapes
from wysiwyc import data_parallel
from wysiwyc import errors
from wysiwyc import models
from wysiwyc import stages
from wysiwyc import train_steps
from wysiwyc.models import zoo

# torchvision's sizes: vgg16 has 138,357,544 parameters, of which the classifier
# (25088-4096-4096-1000) holds 123,642,856; resnet50 has 25,557,032, of which fc holds 2,049,000.
VGG16_FEATURES_PARAMS = 138_357_544 - 123_642_856
RESNET50_BACKBONE_PARAMS = 25_557_032 - 2_049_000


# ------------------------------------------------------------ flaxmodels' layout, written here


def _vgg16_layout():
  """h5 path -> shape of flaxmodels' vgg16_weights.h5 (convolutions; fc6-fc8 omitted)."""
  layout, channels = {}, 3
  for block, (features, layers) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), 1):
    for layer in range(1, layers + 1):
      layout[f'conv{block}_{layer}/weight'] = (3, 3, channels, features)
      layout[f'conv{block}_{layer}/bias'] = (features,)
      channels = features
  return layout


def _resnet50_layout(width=64):
  """h5 path -> shape of flaxmodels' resnet50_weights.h5 (with `width` 64: the real file)."""
  bn = lambda prefix, n: {f'{prefix}/{k}': (n,) for k in ('scale', 'bias', 'mean', 'var')}
  layout = {'conv1/weight': (7, 7, 3, width), **bn('bn1', width)}
  channels = width
  for stage, blocks in enumerate((3, 4, 6, 3)):
    w = width * 2 ** stage
    for i in range(blocks):
      p = f'layer{stage + 1}/block{i}'
      layout.update({f'{p}/conv1/weight': (1, 1, channels, w), **bn(f'{p}/bn1', w),
                     f'{p}/conv2/weight': (3, 3, w, w), **bn(f'{p}/bn2', w),
                     f'{p}/conv3/weight': (1, 1, w, 4 * w), **bn(f'{p}/bn3', 4 * w)})
      if i == 0:
        layout.update({f'{p}/downsample/conv/weight': (1, 1, channels, 4 * w),
                       **bn(f'{p}/downsample/bn', 4 * w)})
      channels = 4 * w
  layout.update({'fc/weight': (channels, 1000), 'fc/bias': (1000,)})
  return layout


def _write_h5(path, layout, seed=0):
  """Random values in `layout`, written with h5py as flaxmodels' files are; returns them."""
  rng = np.random.default_rng(seed)
  values = {}
  for key, shape in layout.items():
    if key.endswith('/var') or key.endswith('/scale'):
      values[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith('weight') and len(shape) == 4:
      values[key] = (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:3]))).astype(np.float32)
    else:
      values[key] = (rng.normal(size=shape) * 0.1).astype(np.float32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, 'w') as f:
    for key, value in values.items():
      f.create_dataset(key, data=value)
  return values


def _as_flax(values, collection):
  """h5 path -> array  =>  the nested Flax tree of one collection ('params'/'batch_stats')."""
  tree = {}
  for key, value in values.items():
    *groups, leaf = key.split('/')
    if groups[0].startswith('fc'):
      continue
    stats = leaf in ('mean', 'var')
    if stats != (collection == 'batch_stats'):
      continue
    node = tree
    for group in groups:
      node = node.setdefault(group, {})
    node['kernel' if leaf == 'weight' else leaf] = value
  return tree


@pytest.fixture
def offline(monkeypatch):
  """No host is reachable and any download attempt fails the test."""
  monkeypatch.setenv('WYSIWYC_OFFLINE', '1')

  def no_download(*args, **kwargs):
    raise AssertionError(f'download attempted: {args}')
  monkeypatch.setattr('urllib.request.urlretrieve', no_download)


# ----------------------------------------------------------------------------------- the tests


def test_architectures_have_torchvision_s_sizes():
  vgg = variable_shapes(models.classifiers.build('vgg16', 20, pretrained=None), 224)['params']
  assert num_params(vgg['backbone']) == VGG16_FEATURES_PARAMS
  assert num_params(vgg['head']) == 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 20 + 20
  resnet = variable_shapes(models.classifiers.build('resnet50', 20, pretrained=None))
  assert num_params(resnet['params']['backbone']) == RESNET50_BACKBONE_PARAMS
  assert num_params(resnet['params']['head']) == 2048 * 20 + 20
  # Every backbone variable has the shape of flaxmodels' file, and no file entry is left over.
  for name, layout in (('vgg16', _vgg16_layout()), ('resnet50', _resnet50_layout())):
    shapes = variable_shapes(models.classifiers.build(name, 20, pretrained=None))
    expected, found = {}, {}
    for collection in ('params', 'batch_stats'):
      for path, shape in flax.traverse_util.flatten_dict(_as_flax(layout, collection)).items():
        expected[(collection,) + path] = shape
      backbone = shapes.get(collection, {}).get('backbone', {})
      for path, leaf in flax.traverse_util.flatten_dict(backbone).items():
        found[(collection,) + path] = tuple(leaf.shape)
    assert found == expected, name


def _vgg_reference_features(x, values):
  """VGG-16's convolutional part written with lax ops, from the file's arrays."""
  for block, layers in enumerate((2, 2, 3, 3, 3), 1):
    for layer in range(1, layers + 1):
      x = jax.lax.conv_general_dilated(x, values[f'conv{block}_{layer}/weight'], (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      x = jax.nn.relu(x + values[f'conv{block}_{layer}/bias'])
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return x


def test_vgg16_weights_from_a_local_file_give_the_outputs_of_the_same_parameters(tmp_path,
                                                                                 offline):
  values = _write_h5(str(tmp_path / 'flaxmodels' / 'vgg16_weights.h5'), _vgg16_layout())
  model = models.classifiers.build('vgg16', 5, pretrained='imagenet', ckpt_dir=str(tmp_path),
                                   head_width=16, pooled_size=2)
  assert models.missing_pretrained(model) is None
  fresh = random_variables(model, seed=1)
  loaded = models.load_pretrained(model, {'params': fresh['params'], 'batch_stats': {}})
  direct = {'params': {'backbone': _as_flax(values, 'params'), 'head': fresh['params']['head']}}
  jax.tree.map(np.testing.assert_array_equal, loaded['params'], direct['params'])
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  apply = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.features)))
  (logits, features), (direct_logits, direct_features) = (
      apply({'params': loaded['params']}, images), apply(direct, images))
  np.testing.assert_array_equal(logits, direct_logits)
  assert logits.shape == (2, 5) and features.shape == (2, 1, 1, 512)
  reference = jax.jit(_vgg_reference_features)(images, values)
  np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5 * float(
      np.abs(reference).max()))


def test_resnet50_weights_from_a_local_file(tmp_path, offline):
  # The real layout at full width: every backbone variable is the file's, the head untouched.
  values = _write_h5(str(tmp_path / 'flaxmodels' / 'resnet50_weights.h5'), _resnet50_layout())
  model = models.classifiers.build('resnet50', 7, pretrained='imagenet', ckpt_dir=str(tmp_path))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variable_shapes(model))
  loaded = models.load_pretrained(model, zeros)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, loaded[collection]['backbone'],
                 _as_flax(values, collection))
  np.testing.assert_array_equal(loaded['params']['head']['kernel'], 0.0)

  # A narrow copy in the same layout runs fast: the loaded model computes exactly what the same
  # parameters set directly compute, and a frozen backbone's BatchNorm keeps its statistics.
  small_dir = tmp_path / 'small'
  values = _write_h5(str(small_dir / 'resnet50_weights.h5'), _resnet50_layout(width=8), seed=2)
  model = models.classifiers.build('resnet50', 7, pretrained='imagenet',
                                   ckpt_dir=str(small_dir), width=8)
  fresh = random_variables(model, seed=3)
  loaded = models.load_pretrained(model, fresh)
  direct = {'params': {'backbone': _as_flax(values, 'params'), 'head': fresh['params']['head']},
            'batch_stats': {'backbone': _as_flax(values, 'batch_stats')}}
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  run = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  (logits, updated), (direct_logits, _) = run(loaded, images), run(direct, images)
  np.testing.assert_array_equal(logits, direct_logits)
  assert np.abs(np.asarray(logits)).max() > 0
  jax.tree.map(np.testing.assert_array_equal, updated['batch_stats'], loaded['batch_stats'])
  # Export and re-read: the same backbone.
  exported = str(tmp_path / 'exported.h5')
  zoo.write_weight_file(exported, {c: loaded[c]['backbone'] for c in ('params', 'batch_stats')})
  jax.tree.map(np.testing.assert_array_equal, zoo.read_weight_file(exported),
               {c: _as_flax(values, c) for c in ('params', 'batch_stats')})


def test_weights_are_found_at_the_top_of_ckpt_dir_too(tmp_path, offline):
  _write_h5(str(tmp_path / 'resnet50_weights.h5'), _resnet50_layout(width=8))
  assert zoo.find_weight_file('resnet50', str(tmp_path)) == str(tmp_path / 'resnet50_weights.h5')
  assert zoo.find_weight_file('vgg16', str(tmp_path)) is None


def test_missing_weights_offline_say_what_and_where(tmp_path, offline):
  model = models.classifiers.build('vgg16', 3, pretrained='imagenet', ckpt_dir=str(tmp_path))
  message = models.missing_pretrained(model)
  assert 'vgg16_weights.h5' in message and zoo.WEIGHT_URLS['vgg16'] in message
  assert str(tmp_path / 'flaxmodels' / 'vgg16_weights.h5') in message
  assert '--config.weights_dir' in message
  with pytest.raises(errors.UserError, match='vgg16_weights.h5'):
    models.load_pretrained(model, {'params': {}, 'batch_stats': {}})
  assert os.listdir(tmp_path) == []
  assert models.missing_pretrained(models.classifiers.build('vgg16', 3, pretrained=None)) is None
  assert models.missing_pretrained(models.classifiers.build('vgg16', 3, pretrained='None')) is None
  with pytest.raises(errors.UserError, match='imagenet'):
    models.missing_pretrained(models.classifiers.build('vgg16', 3, pretrained='imagenet21k'))


def test_a_file_of_another_architecture_is_refused(tmp_path, offline):
  _write_h5(str(tmp_path / 'flaxmodels' / 'resnet50_weights.h5'), _vgg16_layout())
  model = models.classifiers.build('resnet50', 3, pretrained='imagenet', ckpt_dir=str(tmp_path))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variable_shapes(model))
  with pytest.raises(errors.UserError, match='not a weights file of this architecture'):
    models.load_pretrained(model, zeros)
  narrow = models.classifiers.build('resnet50', 3, pretrained='imagenet', ckpt_dir=str(tmp_path),
                                    width=8)
  _write_h5(str(tmp_path / 'flaxmodels' / 'resnet50_weights.h5'), _resnet50_layout())
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variable_shapes(narrow))
  with pytest.raises(errors.UserError, match='standard width'):
    models.load_pretrained(narrow, zeros)


def test_trainable_head_updates_only_the_head():
  model = models.classifiers.build('resnet50', 4, pretrained=None, width=8)
  variables = random_variables(model)
  tx = train_steps.make_optimizer(ml_collections.ConfigDict({'learning_rate': 0.1}), 'head')
  state = train_steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                                 batch_stats=variables['batch_stats'],
                                 opt_state=tx.init(variables['params']))
  mesh = data_parallel.create_mesh()
  step = train_steps.jit_train_step(train_steps.make_classifier_train_step(model, tx, True), mesh)
  batch = {'image': np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32),
           'labels': np.eye(4, dtype=np.float32)}
  new, metrics = step(state, data_parallel.shard_batch(batch, mesh), jax.random.key(0))
  assert np.isfinite(metrics['loss'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.params['backbone']),
               variables['params']['backbone'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.batch_stats),
               variables['batch_stats'])
  assert np.abs(np.asarray(new.params['head']['kernel']) -
                variables['params']['head']['kernel']).max() > 0
  labels = zoo.trainable_labels(variables['params'], 'all')
  assert set(jax.tree.leaves(labels)) == {'train'}
  with pytest.raises(errors.UserError, match='head'):
    zoo.trainable_labels({'backbone': {}, 'classifier': {}}, 'head')


@pytest.mark.parametrize('size,out', [(1, 7), (7, 7), (10, 7), (13, 7), (6, 4), (5, 2)])
def test_adaptive_average_pool_uses_pytorch_bins(size, out):
  x = np.random.default_rng(size).normal(size=(2, size, size + 1, 3)).astype(np.float32)
  expected = np.zeros((2, out, out, 3), np.float32)
  for i in range(out):
    for j in range(out):
      r0, r1 = int(np.floor(i * size / out)), int(np.ceil((i + 1) * size / out))
      c0, c1 = int(np.floor(j * (size + 1) / out)), int(np.ceil((j + 1) * (size + 1) / out))
      expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  np.testing.assert_allclose(zoo.adaptive_average_pool(jnp.asarray(x), out), expected, rtol=1e-5,
                             atol=1e-6)


def test_max_pool_drops_an_odd_last_row_and_column():
  x = np.random.default_rng(0).normal(size=(1, 7, 5, 2)).astype(np.float32)
  expected = np.array([[[x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].max() for c in range(2)]
                        for j in range(2)] for i in range(3)])
  np.testing.assert_array_equal(zoo.max_pool_2x2_floor(jnp.asarray(x))[0], expected)


def test_same_outputs_as_flaxmodels_with_the_same_file(tmp_path):
  """Cross-check with flaxmodels itself where it is importable (not a dependency)."""
  vgg_module = pytest.importorskip('flaxmodels.vgg.vgg')
  resnet_module = pytest.importorskip('flaxmodels.resnet.resnet')
  values = _write_h5(str(tmp_path / 'flaxmodels' / 'vgg16_weights.h5'), _vgg16_layout())
  _write_h5(str(tmp_path / 'flaxmodels' / 'resnet50_weights.h5'), _resnet50_layout(), seed=1)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  for name, theirs, pick in (
      ('vgg16', vgg_module.VGG16(output='logits', pretrained='imagenet', include_head=False,
                                 normalize=False, ckpt_dir=str(tmp_path)), lambda out: out),
      ('resnet50', resnet_module.ResNet50(output='activations', pretrained='imagenet',
                                          normalize=False, ckpt_dir=str(tmp_path)),
       lambda out: out['block4_2'])):
    ours = models.classifiers.build(name, 3, pretrained='imagenet', ckpt_dir=str(tmp_path))
    variables = models.load_pretrained(ours, random_variables(ours))
    if not variables.get('batch_stats'):
      variables.pop('batch_stats', None)
    features = jax.jit(lambda v, x: ours.apply(v, x, method=ours.features))(variables, images)
    their_variables = jax.jit(lambda x: theirs.init(jax.random.key(0), x, train=False))(images)
    expected = pick(jax.jit(lambda v, x: theirs.apply(v, x, train=False))(their_variables,
                                                                          images))
    scale = float(np.abs(np.asarray(expected)).max())
    assert scale > 0, name
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
  del values


class UserClassifier(nn.Module):
  """Stands for a user's own Flax classifier (docs/real_data.md)."""
  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    return nn.Dense(self.num_classes)(images.mean(axis=(1, 2)))


def make_user_model(num_classes, **kwargs):
  return UserClassifier(num_classes=num_classes, **kwargs)


def test_own_flax_module_with_parameters_from_an_orbax_checkpoint(tmp_path):
  """The recipe of docs/real_data.md: the classifier stage loads the user's variables instead of
  training."""
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top
  from wysiwyc import checkpointing  # pylint: disable=g-import-not-at-top
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  params = {'Dense_0': {'kernel': np.arange(9, dtype=np.float32).reshape(3, 3),
                        'bias': np.array([1.0, -2.0, 0.5], np.float32)}}
  checkpointing.save(checkpointing.manager(str(tmp_path / 'orbax')), 0,
                     {'params': params, 'batch_stats': {}}, {})
  config = load_config('voc')
  config.classifier.name = 'tests.test_zoo:make_user_model'
  config.classifier.kwargs = ml_collections.ConfigDict({})
  config.classifier.checkpoint = str(tmp_path / 'orbax')
  config.data.image_size = 8
  spec = pipeline.DataSpec(name='user', class_names=('a', 'b', 'c'), image_size=8,
                           multilabel=True, num_examples={})
  classifier, variables = stages.classifier_stage(config, spec, str(tmp_path / 'work'),
                                                  data_parallel.create_mesh(), jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables['params']), params)
  logits = classifier.apply(variables, np.ones((1, 8, 8, 3), np.float32))
  np.testing.assert_allclose(logits, [[1.0 + 9.0, -2.0 + 12.0, 0.5 + 15.0]], rtol=1e-6)
