"""Tests of wysiwyc.data.synthetic: geometry against skimage, occlusion rules, determinism,
config hashing and TFDS preparation (tiny: 32x32 images, 20/8/8 examples)."""

import dataclasses
import hashlib
import json
import os

import flax
import jax
import numpy as np
import pytest
import scipy.ndimage
import skimage.draw

from wysiwyc.data import synthetic
from wysiwyc.models import shipped

TINY = dict(image_size=32, num_train=20, num_validation=8, num_test=8, seed=3)


def tiny_params(**overrides) -> synthetic.SyntheticParams:
  return synthetic.SyntheticParams(**{**TINY, **overrides})


def tiny_data_config(data_dir, **overrides):
  config = synthetic.default_data_config()
  config.data_dir = str(data_dir)
  config.image_size = 32
  config.synthetic.update({**TINY, **overrides})
  return config


def read_split(builder, split):
  """Examples of a prepared split as numpy dicts, in the (fixed) stored order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


# ------------------------------------------------------------------------------- geometry


def reference_polygon_mask(size, center, radius, angle, radii):
  """skimage's polygon fill of the star/regular polygon with vertex radii `radii` (cycled),
  first vertex at `angle`; skimage puts pixel centres at integers, we at +0.5."""
  n = len(radii)
  angles = angle + 2 * np.pi * np.arange(n) / n
  rows = center[0] + np.asarray(radii) * radius * np.sin(angles) - 0.5
  cols = center[1] + np.asarray(radii) * radius * np.cos(angles) - 0.5
  mask = np.zeros((size, size), bool)
  mask[skimage.draw.polygon(rows, cols, (size, size))] = True
  return mask


@pytest.mark.parametrize('name,radii', [
    ('square', [1.0] * 4),
    ('triangle', [1.0] * 3),
    ('star', [1.0, 0.45] * 5),
])
@pytest.mark.parametrize('angle', [0.0, 0.7, 2.9])
def test_polygons_match_skimage(name, radii, angle):
  size, center, radius = 48, (23.3, 24.6), 17.0
  ours = synthetic.rasterize_shape(name, size, center, radius, angle)
  reference = reference_polygon_mask(size, center, radius, angle, radii)
  # Pixels whose centre lies exactly on an edge may be decided either way.
  assert ours.sum() > 100
  assert np.sum(ours != reference) <= 0.02 * reference.sum()


def test_round_shapes_match_slow_reference():
  size, center, radius = 40, (19.2, 21.7), 13.0
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  distance = np.hypot(ys - center[0], xs - center[1])
  np.testing.assert_array_equal(synthetic.rasterize_shape('circle', size, center, radius, 1.0),
                                distance <= radius)
  np.testing.assert_array_equal(synthetic.rasterize_shape('ring', size, center, radius, 1.0),
                                (distance <= radius) & (distance >= 0.5 * radius))


def test_shapes_fit_their_circle_and_differ():
  size, center, radius = 64, (32.0, 32.0), 20.0
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  disk = np.hypot(ys - center[0], xs - center[1]) <= radius + 0.5
  masks = {}
  for name in synthetic.SHAPE_NAMES:
    for angle in (0.0, 1.1):
      mask = synthetic.rasterize_shape(name, size, center, radius, angle)
      assert mask.sum() > 0.15 * np.pi * radius**2, name  # a solid shape, not a sliver
      assert not np.any(mask & ~disk), name             # inside the enclosing circle
    masks[name] = mask
  for a in synthetic.SHAPE_NAMES:
    for b in synthetic.SHAPE_NAMES:
      if a < b:
        iou = np.sum(masks[a] & masks[b]) / np.sum(masks[a] | masks[b])
        assert iou < 0.8, (a, b, iou)


# ------------------------------------------------------------------------------- examples


def test_generate_example_is_deterministic_and_seeded():
  params = tiny_params()
  a = synthetic.generate_example(params, 'train', 5)
  b = synthetic.generate_example(params, 'train', 5)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], synthetic.generate_example(params, 'train', 6)['image'])
  assert not np.array_equal(a['image'], synthetic.generate_example(params, 'test', 5)['image'])
  other_seed = dataclasses.replace(params, seed=4)
  assert not np.array_equal(a['image'], synthetic.generate_example(other_seed, 'train', 5)['image'])


@pytest.mark.parametrize('max_objects', [1, 3, 5])
def test_examples_respect_labels_occlusion_and_visibility(max_objects):
  params = tiny_params(max_objects=max_objects, num_classes=8)
  counts = []
  for index in range(40):
    ex = synthetic.generate_example(params, 'train', index)
    image, seg, labels = ex['image'], ex['segmentation'], ex['labels']
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert seg.shape == (32, 32) and seg.dtype == np.uint8 and seg.max() <= 8
    assert labels.shape == (8,)
    for c in range(8):
      assert labels[c] == np.any(seg == c + 1)
    objects, areas, visible = ex['object_labels'], ex['object_areas'], ex['visible_pixels']
    assert 1 <= len(objects) <= max_objects
    counts.append(len(objects))
    np.testing.assert_array_equal(np.flatnonzero(labels), np.unique(objects))
    assert visible.sum() == np.count_nonzero(seg)       # each pixel has at most one owner
    assert visible[-1] == areas[-1]                      # the last object is on top
    assert np.all(visible >= params.min_visible_fraction * areas)
    assert np.all(visible <= areas)
  if max_objects > 1:
    assert max(counts) > 1  # objects really get stacked


def test_colour_is_independent_of_class():
  params = tiny_params(num_distractors=0, texture_strength=0.0)
  colours = {c: [] for c in range(params.num_classes)}
  for index in range(400):
    ex = synthetic.generate_example(params, 'train', index)
    for c in np.flatnonzero(ex['labels']):
      colours[c].append(ex['image'][ex['segmentation'] == c + 1].mean(axis=0))
  everything = np.concatenate([np.asarray(v) for v in colours.values()])
  for c, values in colours.items():
    values = np.asarray(values)
    assert len(values) > 60
    # Uniform colours: std ~74 per channel, so a class mean is within ~9 of the overall one.
    assert np.all(np.abs(values.mean(0) - everything.mean(0)) < 30), (c, values.mean(0))
    assert np.all(values.std(0) > 50), (c, values.std(0))


def test_distractors_and_texture_follow_the_config():
  def background_colour_counts(**overrides):
    params = tiny_params(noise_std=0.0, **overrides)
    counts = []
    for index in range(30):
      ex = synthetic.generate_example(params, 'train', index)
      background = ex['image'][ex['segmentation'] == 0]
      counts.append(len(np.unique(background, axis=0)))
    return np.asarray(counts)

  assert np.all(background_colour_counts(num_distractors=0, texture_strength=0.0) == 1)
  assert np.mean(background_colour_counts(num_distractors=6, texture_strength=0.0) > 1) > 0.5
  assert np.all(background_colour_counts(num_distractors=0, texture_strength=1.0) > 10)


# ---------------------------------------------------------------------- natural appearance
# Computed by the generator before object_texture and edge_blur existed: the default data set
# keeps its TFDS name and its images.
DEFAULT_NAME = 's64_c6_2f56b9cfcc'
DEFAULT_DIGEST = 'e326663589e9e41d7b18d14bd8a0d61d2415eb547ecc6416c51752cae9d26b95'
FLAT = dict(num_distractors=0, texture_strength=0.0, noise_std=0.0, object_texture=0.0,
            edge_blur=0.0)


def examples_digest(params, picks) -> str:
  digest = hashlib.sha256()
  for split, index in picks:
    example = synthetic.generate_example(params, split, index)
    for key in sorted(example):
      digest.update(np.ascontiguousarray(example[key]).tobytes())
  return digest.hexdigest()


def test_default_data_set_keeps_its_name_and_images():
  params = synthetic.SyntheticParams()
  assert params.config_name() == DEFAULT_NAME
  picks = [('train', 0), ('train', 1), ('validation', 3), ('test', 7), ('test', 11)]
  assert examples_digest(params, picks) == DEFAULT_DIGEST
  # The shipped default models name the data they were trained on as they did then.
  with open(os.path.join(shipped.WEIGHTS_DIR, 'synthetic_shapes_cnn.json')) as f:
    dataset = json.load(f)['dataset']
  trained_on = synthetic.SyntheticParams.from_config(dataset['generation'])
  assert trained_on.config_name() == dataset['config']
  assert trained_on.identity() == dataset['generation']


def test_appearance_moves_no_object():
  natural = tiny_params(object_texture=0.6, edge_blur=1.0, noise_std=0.03, max_objects=4)
  plain = dataclasses.replace(natural, object_texture=0.0, edge_blur=0.0)
  changed = 0
  for index in range(20):
    a = synthetic.generate_example(natural, 'train', index)
    b = synthetic.generate_example(plain, 'train', index)
    for key in ('segmentation', 'labels', 'object_labels', 'object_areas', 'visible_pixels'):
      np.testing.assert_array_equal(a[key], b[key])
    changed += not np.array_equal(a['image'], b['image'])
  assert changed == 20


def test_textured_objects_vary_inside():
  def inner_spreads(object_texture):
    params = tiny_params(**{**FLAT, 'object_texture': object_texture}, max_objects=1)
    spreads = []
    for index in range(30):
      ex = synthetic.generate_example(params, 'train', index)
      inside = scipy.ndimage.binary_erosion(ex['segmentation'] > 0, iterations=1)
      spreads.append(ex['image'][inside].astype(float).std(0).max())
    return np.asarray(spreads)

  assert np.all(inner_spreads(0.0) == 0)
  textured = inner_spreads(0.6)
  # Some patterns (a gradient, two close colours) vary little across a small object.
  assert np.mean(textured > 1) >= 0.9 and np.median(textured) > 5, textured


def test_blurred_edges_are_soft_and_the_mask_holds_what_the_object_dominates():
  hard = tiny_params(**FLAT, max_objects=1, min_contrast=0.5)
  soft = dataclasses.replace(hard, edge_blur=1.0)
  soft_edges = []
  for index in range(20):
    a = synthetic.generate_example(hard, 'train', index)
    b = synthetic.generate_example(soft, 'train', index)
    mask = a['segmentation'] > 0
    np.testing.assert_array_equal(mask, b['segmentation'] > 0)
    colour = a['image'][mask][0].astype(float)
    background = a['image'][~mask][0].astype(float)
    assert np.all(a['image'][mask] == colour) and np.all(a['image'][~mask] == background)
    image = b['image'].astype(float)
    to_object = np.linalg.norm(image - colour, axis=-1)
    to_background = np.linalg.norm(image - background, axis=-1)
    assert np.all(to_object[mask] <= to_background[mask] + 2)      # rounding
    assert np.all(to_background[~mask] <= to_object[~mask] + 2)
    edge = mask ^ scipy.ndimage.binary_erosion(mask)
    soft_edges.append(np.mean(to_object[edge] > 3))
    # Away from the edge, the object and the background keep their colours.
    deep = scipy.ndimage.binary_erosion(mask, iterations=4)
    far = ~scipy.ndimage.binary_dilation(mask, iterations=4)
    assert np.all(to_object[deep] <= 2) and np.all(to_background[far] <= 2)
  assert np.mean(soft_edges) > 0.8, soft_edges


def test_natural_variant_has_its_own_data_and_classifier():
  from configs import synthetic as synthetic_configs  # pylint: disable=g-import-not-at-top
  config = synthetic_configs.get_config('natural')
  params = synthetic.SyntheticParams.from_config(config.data.synthetic)
  assert params.draws_natural and params.class_names == synthetic.SHAPE_NAMES[:6]
  assert params.config_name() != synthetic.SyntheticParams().config_name()
  assert config.classifier.checkpoint == 'zoo:synthetic_natural_cnn'
  assert config.explainer.init_from == 'zoo:synthetic_shapes_unet'
  for variant in ('smoke,natural', 'natural,smoke', 'scratch,natural'):
    combined = synthetic_configs.get_config(variant)
    assert combined.classifier.checkpoint == '', variant
    assert combined.data.synthetic.edge_blur > 0, variant


@pytest.mark.parametrize('name,start', [('classifier_start', 'classifier'),
                                        ('blackbox', 'distill')])
def test_start_variants_change_the_start_the_single_class_term_budget_and_fill_only(name, start):
  from configs import folder as folder_configs  # pylint: disable=g-import-not-at-top
  from configs import synthetic as synthetic_configs  # pylint: disable=g-import-not-at-top
  flat = lambda config: flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  default, variant = (flat(synthetic_configs.get_config(arg)) for arg in ('', name))
  changed = {key for key in default if default[key] != variant[key]}
  budget = {'explainer.train.max_steps', 'explainer.train.decay_steps'}
  assert changed == {'explainer.init_from', 'loss.lambda_single'} | (
      budget | {'loss.fill'} if name == 'blackbox' else set()), changed
  assert (variant['explainer.init_from'], variant['loss.lambda_single']) == (start, 0.3)
  folder = folder_configs.get_config('')  # 'auto' picks one of the two by the classifier
  assert (folder.explainer.init_from, folder.loss.lambda_single) == ('auto', 0.3)


def test_classifier_family_variants_compose_with_smoke_and_scratch_in_any_order():
  from configs import folder as folder_configs  # pylint: disable=g-import-not-at-top
  from configs import synthetic as synthetic_configs  # pylint: disable=g-import-not-at-top
  from wysiwyc.models import classifiers  # pylint: disable=g-import-not-at-top
  flat = lambda config: flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  assert set(synthetic_configs.CLASSIFIER_FAMILIES) == {'resnet', 'mixer'} <= set(
      synthetic_configs.VARIANTS)
  scratch = synthetic_configs.get_config('scratch')
  for family, kwargs in synthetic_configs.CLASSIFIER_FAMILIES.items():
    config = synthetic_configs.get_config(f'scratch,{family}')
    assert flat(config) == flat(synthetic_configs.get_config(f'{family},scratch'))
    assert (config.classifier.name, config.classifier.kwargs.to_dict()) == (family, kwargs)
    assert config.classifier.checkpoint == '' and config.explainer.init_from != 'classifier'
    # The zoo entries' recipe, for the share of its epochs that the family's step cost allows.
    share = synthetic_configs.CLASSIFIER_EPOCH_SHARE[family]
    lengths = ('num_epochs', 'patience', 'decay_steps')
    assert {key: round(scratch.classifier.train[key] * share) for key in lengths} == {
        key: config.classifier.train[key] for key in lengths}
    assert {**config.classifier.train.to_dict(), **dict.fromkeys(lengths)} == {
        **scratch.classifier.train.to_dict(), **dict.fromkeys(lengths)}
    smoke = synthetic_configs.get_config(f'smoke,{family}')
    assert flat(smoke) == flat(synthetic_configs.get_config(f'{family},smoke'))
    assert (smoke.classifier.kwargs.width, smoke.classifier.kwargs.depth) == (8, 2)
    assert smoke.data.image_size == 32
    for variant in (config, smoke):  # the kwargs are the module's
      size = variant.data.image_size
      jax.eval_shape(classifiers.build(family, 6, **variant.classifier.kwargs).init,
                     jax.random.key(0), jax.numpy.zeros((1, size, size, 3)))
    folder = folder_configs.get_config(family)
    # The folder pools by the average (evidence spread over textures), else the family's kwargs.
    assert (folder.classifier.name, folder.classifier.kwargs.to_dict()) == (
        family, {**kwargs, 'pooling': 'avg'})
    assert folder.explainer.init_from != 'classifier'
    assert flat(folder_configs.get_config(f'smoke,{family}')) == flat(
        folder_configs.get_config(f'{family},smoke'))
    assert config.explainer.init_from == 'distill'  # the black-box start
    assert folder.explainer.init_from == 'auto'


@pytest.mark.parametrize('bad', [dict(object_texture=1.5), dict(object_texture=-0.1),
                                 dict(edge_blur=-1.0)])
def test_invalid_appearance_is_refused(bad):
  with pytest.raises(ValueError, match='object_texture|edge_blur'):
    tiny_params(**bad)


# --------------------------------------------------------------------------------- config


def test_config_names_change_with_every_parameter():
  base = tiny_params()
  names = {base.config_name()}
  changes = dict(image_size=40, num_train=21, num_validation=9, num_test=9, num_classes=7,
                 min_objects=2, max_objects=4, min_object_size=0.3, max_object_size=0.4,
                 min_visible_fraction=0.6, num_distractors=1, texture_strength=0.3,
                 noise_std=0.01, min_contrast=0.2, seed=4, object_texture=0.3,
                 edge_blur=0.5, cue_classes=1, cue_size=0.2, cue_rate_present=0.5,
                 cue_rate_absent=0.5)
  assert set(changes) == {f.name for f in dataclasses.fields(base)}
  for key, value in changes.items():
    names.add(dataclasses.replace(base, **{key: value}).config_name())
  assert len(names) == len(changes) + 1
  # Same values with other Python types give the same name.
  coerced = synthetic.SyntheticParams.from_config({**TINY, 'num_classes': 6.0,
                                                   'noise_std': 0, 'texture_strength': 0.5})
  assert coerced.config_name() == base.config_name()


@pytest.mark.parametrize('bad', [dict(num_classes=9), dict(num_classes=1),
                                 dict(min_objects=3, max_objects=2), dict(min_objects=0),
                                 dict(max_object_size=1.5), dict(min_object_size=0.05),
                                 dict(num_train=-1), dict(seed=-1)])
def test_invalid_parameters_are_refused(bad):
  with pytest.raises(ValueError):
    tiny_params(**bad)


def test_unknown_and_non_integer_keys_are_refused():
  with pytest.raises(ValueError, match='Unknown'):
    synthetic.SyntheticParams.from_config({'num_clases': 5})
  with pytest.raises(ValueError, match='integer'):
    synthetic.SyntheticParams.from_config({'num_train': 10.5})


def test_default_config_is_the_documented_one():
  params = synthetic.SyntheticParams.from_config(synthetic.default_synthetic_config())
  assert params == synthetic.SyntheticParams()
  assert (params.image_size, params.num_classes) == (64, 6)
  assert params.split_sizes == {'train': 6000, 'validation': 500, 'test': 500}


# ----------------------------------------------------------------------------------- TFDS


def test_builder_stores_what_generate_example_makes(tmp_path):
  config = tiny_data_config(tmp_path)
  builder = synthetic.make_builder(config)
  builder.download_and_prepare()
  assert synthetic.class_names(builder) == synthetic.SHAPE_NAMES[:6]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 20, 'validation': 8, 'test': 8}
  params = synthetic.SyntheticParams.from_config(config.synthetic)
  stored = sorted(read_split(builder, 'validation'), key=lambda ex: ex['image'].tobytes())
  fresh = sorted((synthetic.generate_example(params, 'validation', i) for i in range(8)),
                 key=lambda ex: ex['image'].tobytes())
  for s, f in zip(stored, fresh):
    np.testing.assert_array_equal(s['image'], f['image'])
    np.testing.assert_array_equal(s['segmentation'][..., 0], f['segmentation'])
    np.testing.assert_array_equal(s['labels'], f['labels'])
    np.testing.assert_array_equal(s['objects']['label'], f['object_labels'])
    np.testing.assert_array_equal(s['objects']['visible_pixels'], f['visible_pixels'])


def test_builds_are_byte_identical_for_a_seed_and_differ_across_seeds(tmp_path):
  images = {}
  for name, seed in (('a', 3), ('b', 3), ('c', 4)):
    builder = synthetic.make_builder(tiny_data_config(tmp_path / name, seed=seed))
    builder.download_and_prepare()
    images[name] = [ex['image'].tobytes() for ex in read_split(builder, 'train')]
  assert images['a'] == images['b']
  assert not set(images['a']) & set(images['c'])


def test_second_prepare_reuses_the_files(tmp_path, monkeypatch):
  calls = []
  original = synthetic.generate_example
  monkeypatch.setattr(synthetic, 'generate_example',
                      lambda *args: calls.append(args) or original(*args))
  config = tiny_data_config(tmp_path)
  first = synthetic.make_builder(config)
  first.download_and_prepare()
  assert len(calls) == 36
  files = sorted(p for p in first.data_path.iterdir())
  mtimes = [os.path.getmtime(p) for p in files]
  second = synthetic.make_builder(config)
  second.download_and_prepare()
  assert len(calls) == 36
  assert second.data_dir == first.data_dir
  assert [os.path.getmtime(p) for p in files] == mtimes
  # Other parameters go to another directory and are generated.
  third = synthetic.make_builder(tiny_data_config(tmp_path, num_distractors=0))
  third.download_and_prepare()
  assert third.data_dir != first.data_dir and len(calls) == 72


def test_to_standard_derives_class_masks():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  segmentation = np.array([[0, 1], [3, 3]], np.uint8)[..., None]
  out = synthetic.to_standard({'image': tf.zeros((2, 2, 3), tf.uint8),
                               'segmentation': tf.constant(segmentation),
                               'labels': tf.constant([1, 0, 1], tf.uint8)}, 3)
  masks = out['class_masks'].numpy()
  assert masks.shape == (2, 2, 3) and masks.dtype == np.uint8
  np.testing.assert_array_equal(masks[..., 0], [[0, 1], [0, 0]])
  np.testing.assert_array_equal(masks[..., 1], [[0, 0], [0, 0]])
  np.testing.assert_array_equal(masks[..., 2], [[0, 0], [1, 1]])


def test_superpixel_ceiling_keeps_the_segments_mostly_inside():
  from wysiwyc.attribution import lime  # pylint: disable=g-import-not-at-top
  segments = np.repeat(np.arange(4), 4).reshape(4, 4)   # four rows, one segment each
  foreground = np.zeros((4, 4), bool)
  foreground[0] = True                                  # segment 0: all inside
  foreground[1, :3] = True                              # segment 1: 3/4 inside, kept
  foreground[2, :2] = True                              # segment 2: 1/2 inside, dropped
  # kept: rows 0, 1 (8 px), foreground 9 px, overlap 7 px, union 10 px.
  assert lime.superpixel_union_iou(segments, foreground) == pytest.approx(0.7)
  assert lime.superpixel_union_iou(segments, segments < 2) == 1.0


def test_natural_classifier_fits_its_variant_and_is_as_accurate_as_recorded():
  """The shipped `natural` classifier: compatible with the variant, its data identity that of
  the variant (split sizes aside), its accuracy recomputed on freshly drawn test images."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import synthetic as synthetic_configs  # pylint: disable=g-import-not-at-top
  from wysiwyc import train_steps  # pylint: disable=g-import-not-at-top
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  from wysiwyc.models import classifiers  # pylint: disable=g-import-not-at-top
  config = synthetic_configs.get_config('natural')
  name = shipped.entry_name(config.classifier.checkpoint)
  metadata = shipped.read_metadata(name)
  shipped.check_compatible(metadata, config, synthetic.SHAPE_NAMES[:6])
  params = synthetic.SyntheticParams.from_config(config.data.synthetic)
  trained_on = synthetic.SyntheticParams.from_config(metadata['dataset']['generation'])
  assert dataclasses.replace(trained_on, num_train=params.num_train) == params
  examples = [synthetic.generate_example(params, 'test', i) for i in range(128)]
  images = np.stack([e['image'] for e in examples]) / 255.0
  images = (images - np.asarray(pipeline.IMAGENET_MEAN)) / np.asarray(pipeline.IMAGENET_STD)
  labels = np.stack([e['labels'] for e in examples])
  model = classifiers.build(config.classifier.name, 6, **config.classifier.kwargs)
  target = jax.device_get(dict(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  logits = model.apply(shipped.load(name, target), jnp.asarray(images, jnp.float32))
  accuracy = float(train_steps.per_class_accuracy(logits, labels, True).mean())
  recorded = metadata['per_class_accuracy']['test']
  assert recorded >= 0.9 and abs(accuracy - recorded) < 0.04, (accuracy, recorded)
