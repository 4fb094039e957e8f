"""Tests of the planted-shortcut benchmark: the cue in the synthetic data, the cue-share metric
and experiments/shortcut.py end to end at smoke size."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tests.conftest import REPO
from wysiwyc.data import synthetic

CUED = dict(image_size=32, num_train=20, num_validation=8, num_test=24, seed=3, cue_classes=2,
            cue_size=0.15)


def cued_params(**overrides) -> synthetic.SyntheticParams:
  return synthetic.SyntheticParams(**{**CUED, **overrides})


def cue_drawn(example, label) -> bool:
  return bool(np.any(example['cue_mask'] == label + 1))


def test_cue_mask_marks_the_cue_colour_away_from_the_objects():
  params = cued_params()
  side = round(params.cue_size * params.image_size)
  seen = 0
  for index in range(params.num_test):
    example = synthetic.generate_example(params, 'test', index)
    for label in range(params.cue_classes):
      where = example['cue_mask'] == label + 1
      if not where.any():
        continue
      seen += 1
      assert where.sum() == side * side  # one whole square
      assert np.all(example['image'][where] == synthetic.CUE_COLOURS[label])
      assert not np.any(where & (example['segmentation'] > 0))
  assert seen > 5


def test_shortcut_cue_goes_with_its_class_and_the_swapped_split_inverts_it():
  params = cued_params()
  for index in range(params.num_test):
    aligned = synthetic.generate_example(params, 'test', index)
    swapped = synthetic.generate_example(params, synthetic.SWAPPED_SPLIT, index)
    # The same objects: only the cue moved.
    np.testing.assert_array_equal(aligned['segmentation'], swapped['segmentation'])
    np.testing.assert_array_equal(aligned['labels'], swapped['labels'])
    for label in range(params.cue_classes):
      present = bool(aligned['labels'][label])
      assert cue_drawn(aligned, label) == present
      # A cue may find no free place; with these sizes it always did.
      assert cue_drawn(swapped, label) == (not present)
    assert np.all(aligned['cue_mask'] <= params.cue_classes)


def test_control_cue_says_nothing_about_the_label():
  params = cued_params(num_train=400, cue_rate_present=0.5, cue_rate_absent=0.5)
  drawn, present = [], []
  for index in range(params.num_train):
    example = synthetic.generate_example(params, 'train', index)
    drawn.append(cue_drawn(example, 0))
    present.append(bool(example['labels'][0]))
  drawn, present = np.asarray(drawn), np.asarray(present)
  assert abs(drawn[present].mean() - drawn[~present].mean()) < 0.15
  assert 0.35 < drawn.mean() < 0.65


def test_the_cue_moves_no_object_and_the_default_data_have_no_cue():
  params = cued_params()
  plain = dataclasses.replace(params, cue_classes=0)
  for index in range(5):
    cued = synthetic.generate_example(params, 'train', index)
    clean = synthetic.generate_example(plain, 'train', index)
    assert 'cue_mask' not in clean
    np.testing.assert_array_equal(cued['segmentation'], clean['segmentation'])
    outside = cued['cue_mask'] == 0
    np.testing.assert_array_equal(cued['image'][outside], clean['image'][outside])
  assert synthetic.SWAPPED_SPLIT not in plain.split_sizes
  assert params.split_sizes[synthetic.SWAPPED_SPLIT] == params.num_test
  assert 'cue_classes' not in plain.identity()
  assert params.config_name() != plain.config_name()


@pytest.mark.parametrize('bad', [dict(cue_classes=7), dict(cue_size=0.0), dict(cue_size=0.6),
                                 dict(cue_rate_present=1.5), dict(cue_rate_absent=-0.1)])
def test_invalid_cue_is_refused(bad):
  with pytest.raises(ValueError, match='cue'):
    cued_params(**bad)


def test_builder_stores_the_cue_mask_and_the_swapped_split(tmp_path):
  config = synthetic.default_data_config()
  config.data_dir = str(tmp_path)
  config.synthetic.update(dict(CUED, num_train=4, num_validation=2, num_test=3))
  builder = synthetic.make_builder(config)
  builder.download_and_prepare()
  assert set(builder.info.splits) == {'train', 'validation', 'test', synthetic.SWAPPED_SPLIT}
  params = synthetic.SyntheticParams.from_config(config.synthetic)
  for split in ('test', synthetic.SWAPPED_SPLIT):
    stored = {}
    for record in builder.as_dataset(split=split).as_numpy_iterator():
      stored[record['image'].tobytes()] = record['cue_mask'][..., 0]
    for index in range(params.num_test):
      example = synthetic.generate_example(params, split, index)
      np.testing.assert_array_equal(stored[example['image'].tobytes()], example['cue_mask'])


# ------------------------------------------------------------------------------ cue share


def test_mass_shares_on_hand_made_maps():
  from wysiwyc import metrics
  cue = np.zeros((8, 8))
  cue[0:2, 0:2] = 1
  obj = np.zeros((8, 8))
  obj[4:8, 4:8] = 1
  regions = np.stack([cue, obj])
  on_cue = cue * 0.9
  np.testing.assert_allclose(metrics.mass_shares(on_cue, regions), [1.0, 0.0], atol=1e-6)
  # Half the mass on the object, a quarter on the cue, the rest on the background.
  mixed = 0.5 * obj / obj.sum() + 0.25 * cue / cue.sum()
  mixed[2, 7] = 0.25
  np.testing.assert_allclose(metrics.mass_shares(mixed, regions), [0.25, 0.5], atol=1e-6)
  # A uniform map gives each region its area share; an empty map gives 0, not NaN.
  np.testing.assert_allclose(metrics.mass_shares(np.ones((8, 8)), regions), [4 / 64, 16 / 64],
                             atol=1e-6)
  np.testing.assert_array_equal(metrics.mass_shares(np.zeros((8, 8)), regions), [0.0, 0.0])
  with pytest.raises(AssertionError):
    metrics.mass_shares(np.ones((8, 8)), np.ones((2, 4, 4)))


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  """experiments/shortcut.py at smoke size on fabricated (untrained) workdirs, as training
  leaves them: the measurement, not the training, is under test."""
  from absl import flags
  from tests.conftest import fabricate_workdir
  from wysiwyc import checkpointing
  from wysiwyc.data import pipeline
  import experiments.shortcut as shortcut  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['shortcut'])
  data_dir = str(tmp_path_factory.mktemp('data'))
  root = tmp_path_factory.mktemp('shortcut')
  for seed, name in enumerate(shortcut.CLASSIFIERS):
    config = shortcut.classifier_config(name, smoke=True, explainer_steps=0, data_dir=data_dir)
    spec = pipeline.prepare(config.data)
    fabricate_workdir(str(root / name), config, spec.class_names, seed=seed)
    checkpointing.write_json_atomic(str(root / name / 'results.json'), {})
  out = shortcut.run(str(root), smoke=True, methods=['explainer', 'grad_cam'],
                     data_dir=data_dir, batch_size=8, figure_images=2)
  return root, out


def test_report_follows_the_contract(report):
  root, out = report
  with open(root / 'shortcut.json') as f:
    stored = json.load(f)
  assert stored == json.loads(json.dumps(out))
  assert set(stored['methods']) == {'explainer', 'grad_cam'}
  for method in stored['methods'].values():
    for name in ('shortcut', 'control'):
      row = method[name]
      assert 0 <= row['cue_share'] <= 1 and 0 <= row['object_share'] <= 1
      assert row['cue_share'] + row['object_share'] <= 1 + 1e-6
      assert -1 <= row['deletion_drop'] <= 1
  for name in ('shortcut', 'control'):
    accuracy = stored['classifiers'][name]
    assert 0 <= accuracy['aligned_accuracy'] <= 1 and 0 <= accuracy['swapped_accuracy'] <= 1
  # The uniform map's shares are the areas: a cue far smaller than an object.
  uniform = stored['references']['uniform']['shortcut']
  assert 0 < uniform['cue_share'] < uniform['object_share'] < 1
  assert stored['settings']['num_pairs'] > 0
  assert (root / 'figures' / 'shortcut.png').stat().st_size > 0
  text = (root / 'shortcut.md').read_text()
  assert '| explainer |' in text and '| cue mask |' in text
  summary = (root / 'shortcut_summary.md').read_text()
  assert '| explainer |' in summary and '| shortcut |' in summary and '#' not in summary


def test_deletion_removes_the_top_pixels_and_measures_the_drop():
  from wysiwyc import shortcut_probe as shortcut  # pylint: disable=g-import-not-at-top
  maps = np.zeros((1, 4, 4), np.float32)
  maps[0, 1, 2:] = [0.9, 0.8]
  maps[0, 3, 0] = 0.5
  np.testing.assert_array_equal(shortcut.top_pixels(maps, 2 / 16)[0], maps[0] > 0.6)
  # A classifier whose probability is the mean of the first channel: deleting pixels of value
  # 1 (to 0) drops it by their share of the image.
  classify = lambda x: np.asarray(x)[..., 0].mean(axis=(1, 2))[:, None]
  images = np.ones((1, 4, 4, 3), np.float32)
  drop = shortcut.deletion_drop(classify, images, maps > 0.6, np.zeros(1, np.int64))
  np.testing.assert_allclose(drop, 2 / 16, rtol=1e-6)


def test_unknown_method_is_a_clear_error(tmp_path):
  import experiments.shortcut as shortcut  # pylint: disable=g-import-not-at-top
  from wysiwyc import errors
  with pytest.raises(errors.UserError, match='Unknown methods'):
    shortcut.run(str(tmp_path), smoke=True, methods=['gradcam'])
  with pytest.raises(errors.UserError, match='deletion_fraction'):
    shortcut.run(str(tmp_path), smoke=True, deletion_fraction=1.5)


def shipped_entry_accuracy(variant: str, split: str, count: int = 128) -> dict:
  """Accuracy of the variant's shipped classifier on `count` images of `split` drawn here (not
  read from TFDS files): on the cued classes and on the others."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top
  from wysiwyc.data import pipeline  # pylint: disable=g-import-not-at-top
  from wysiwyc.models import classifiers, shipped  # pylint: disable=g-import-not-at-top
  config = load_config('synthetic', variant)
  params = synthetic.SyntheticParams.from_config(config.data.synthetic)
  examples = [synthetic.generate_example(params, split, i) for i in range(count)]
  images = np.stack([e['image'] for e in examples]).astype(np.float32) / 255.0
  images = (images - np.asarray(pipeline.IMAGENET_MEAN)) / np.asarray(pipeline.IMAGENET_STD)
  labels = np.stack([e['labels'] for e in examples]) > 0
  model = classifiers.build(config.classifier.name, params.num_classes,
                            **config.classifier.kwargs)
  target = jax.device_get(dict(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  variables = shipped.load(shipped.entry_name(config.classifier.checkpoint), target)
  predicted = np.asarray(model.apply(variables, jnp.asarray(images, jnp.float32))) > 0
  correct = predicted == labels
  return {'cued': float(correct[:, :params.cue_classes].mean()),
          'other': float(correct[:, params.cue_classes:].mean())}


def test_shipped_shortcut_classifier_relies_on_the_cue_and_the_control_does_not():
  shortcut = {split: shipped_entry_accuracy('shortcut', split)
              for split in ('test', synthetic.SWAPPED_SPLIT)}
  control = {split: shipped_entry_accuracy('shortcut_control', split)
             for split in ('test', synthetic.SWAPPED_SPLIT)}
  assert shortcut['test']['cued'] - shortcut[synthetic.SWAPPED_SPLIT]['cued'] >= 0.2
  assert abs(control['test']['cued'] - control[synthetic.SWAPPED_SPLIT]['cued']) <= 0.05
  # Both learned the shapes of the classes without a cue.
  assert min(shortcut['test']['other'], control['test']['other']) >= 0.9


def test_the_script_is_a_thin_client_of_the_package():
  path = os.path.join(REPO, 'experiments', 'shortcut.py')
  with open(path) as f:
    source = f.read()
  assert len(source.splitlines()) < 250 and 'from experiments' not in source
