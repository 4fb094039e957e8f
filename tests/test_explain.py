"""Tests of wysiwyc.explain: the Python API and the CLI, on a fabricated (untrained) workdir."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests.conftest import REPO, fabricate_workdir, smoke_config
from wysiwyc import errors
from wysiwyc import explain
from wysiwyc import image_files

CLASSES = ('square', 'circle', 'triangle')  # not alphabetical: the JSON keeps this order


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('workdir'))
  fabricate_workdir(path, smoke_config(tmp_path_factory.mktemp('data')), CLASSES)
  return path


@pytest.fixture(scope='module')
def explainer(workdir):
  return explain.load(workdir)


def tree_digest(root):
  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(folder, name)
      digest.update(path.encode())
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


def test_masks_and_predict_shapes_any_size(explainer):
  assert explainer.class_names == CLASSES
  rng = np.random.default_rng(0)
  for shape in [(2, 32, 32, 3), (1, 17, 50, 3), (3, 1, 1, 3)]:
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    masks = explainer.masks(images)
    assert masks.shape == shape[:3] + (3,)
    assert masks.min() >= 0 and masks.max() <= 1
    probs = explainer.predict(images)
    assert probs.shape == (shape[0], 3) and np.all((probs >= 0) & (probs <= 1))
  single = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  assert explainer.masks(single).shape == (20, 24, 3)
  np.testing.assert_allclose(explainer.masks(single), explainer.masks(single[None])[0], atol=1e-6)


def test_masks_at_model_size_match_the_network(explainer):
  """At the model's own size, masks are exactly sigmoid(explainer logits) of the normalized image."""
  import jax
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  logits = explainer._segment(explainer.explainer_variables, explain.normalize(images))
  np.testing.assert_allclose(explainer.masks(images), jax.nn.sigmoid(logits), atol=1e-6)


@pytest.mark.parametrize('bad,match', [
    (np.zeros((4, 4), np.uint8), 'shape'),
    (np.zeros((1, 4, 4, 4), np.uint8), 'shape'),
    (np.zeros((1, 4, 4, 3), np.float32), 'uint8'),
])
def test_bad_arrays_are_refused(explainer, bad, match):
  with pytest.raises(errors.UserError, match=match):
    explainer.masks(bad)


def test_missing_workdir_parts(tmp_path, workdir):
  with pytest.raises(errors.UserError, match='not a wysiwyc workdir'):
    explain.load(str(tmp_path))
  partial = tmp_path / 'partial'
  partial.mkdir()
  for name in ('config.json', 'spec.json'):
    (partial / name).write_bytes(open(os.path.join(workdir, name), 'rb').read())
  before = tree_digest(str(partial))
  with pytest.raises(errors.UserError, match='no trained explainer'):
    explain.load(str(partial))
  assert tree_digest(str(partial)) == before


def write_test_images(folder):
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
  paths = {}
  paths['rgb'] = folder / 'rgb.png'
  Image.fromarray(rgb).save(paths['rgb'])
  paths['jpeg'] = folder / 'photo.jpg'
  Image.fromarray(rgb).save(paths['jpeg'])
  paths['gray'] = folder / 'gray.png'
  Image.fromarray(rgb[..., 0]).save(paths['gray'])
  paths['rgba'] = folder / 'rgba.png'
  Image.fromarray(np.dstack([rgb, np.full((40, 30), 128, np.uint8)])).save(paths['rgba'])
  paths['gray16'] = folder / 'gray16.png'
  Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16)).save(paths['gray16'])
  paths['tiny'] = folder / 'tiny.png'
  Image.fromarray(rgb[:1, :1]).save(paths['tiny'])
  paths['not_image'] = folder / 'notes.png'
  paths['not_image'].write_text('this is not a png')
  paths['missing'] = folder / 'missing.png'
  return paths


def test_read_image_conversions(tmp_path):
  paths = write_test_images(tmp_path)
  for key in ('rgb', 'jpeg', 'gray', 'rgba', 'gray16', 'tiny'):
    image = explain.read_image(str(paths[key]))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, key
  gray16 = np.asarray(Image.open(paths['gray16']), np.float64)
  np.testing.assert_allclose(explain.read_image(str(paths['gray16']))[..., 0],
                             np.round(gray16 / 65535 * 255), atol=1)
  rgba = explain.read_image(str(paths['rgba']))
  original = np.asarray(Image.open(paths['rgb']), np.float64)
  np.testing.assert_allclose(rgba, np.round(original * 128 / 255 + 255 * 127 / 255), atol=1)
  with pytest.raises(errors.UserError, match='no such file'):
    explain.read_image(str(paths['missing']))
  with pytest.raises(errors.UserError, match='not an image'):
    explain.read_image(str(paths['not_image']))


def test_huge_images_are_refused(tmp_path, monkeypatch):
  path = tmp_path / 'big.png'
  Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(path)
  monkeypatch.setattr(image_files, 'MAX_PIXELS', 2999)
  with pytest.raises(errors.UserError, match='larger than'):
    explain.read_image(str(path))


def test_cli_writes_outputs_reports_problems_and_leaves_workdir_alone(tmp_path, workdir):
  paths = write_test_images(tmp_path)
  out = tmp_path / 'out'
  before = tree_digest(workdir)
  args = [str(p) for p in paths.values()]
  result = subprocess.run([sys.executable, '-m', 'wysiwyc.explain', f'--workdir={workdir}',
                           f'--out={out}', *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr
  # One line per problem on stderr, one per explained image on stdout, and nothing else.
  assert len(result.stderr.splitlines()) == 2, result.stderr[-3000:]
  assert 'missing.png: no such file' in result.stderr
  assert 'notes.png: not an image' in result.stderr
  good = ('rgb', 'jpeg', 'gray', 'rgba', 'gray16', 'tiny')
  lines = result.stdout.splitlines()
  assert len(lines) == len(good), result.stdout
  for key, line in zip(good, lines):
    stem = paths[key].stem
    assert line.startswith(f'{paths[key]}: predicted ')
    assert line.endswith(f'; wrote {out / stem}.png and {out / stem}.json')
    summary = json.loads((out / f'{stem}.json').read_text())
    assert list(summary['probabilities']) == list(CLASSES)  # class order, not alphabetical
    assert list(summary['mask_area']) == list(CLASSES)
    assert summary['threshold'] == 0.5
    assert summary['predicted'] == [c for c in CLASSES if summary['probabilities'][c] > 0.5]
    assert all(0 <= v <= 1 for v in summary['mask_area'].values())
    assert (out / f'{stem}.png').stat().st_size > 0
  assert tree_digest(workdir) == before


@pytest.mark.parametrize('suffix', ['.jpg', '.png'])
def test_exif_orientation_is_applied(tmp_path, suffix):
  """A photo stored 30 wide and 40 high with orientation 6 (rotate 90 degrees clockwise to view)
  is read as viewers show it: 40 wide and 30 high, its stored first row now its last column."""
  stored = np.zeros((40, 30, 3), np.uint8)
  stored[:4] = 255  # a white band along the stored top
  exif = Image.Exif()
  exif[0x0112] = 6
  path = tmp_path / f'phone{suffix}'
  Image.fromarray(stored).save(path, exif=exif)
  image = explain.read_image(str(path))
  assert image.shape == (30, 40, 3)
  assert image[:, -3:].mean() > 200 and image[:, :-6].mean() < 30


def test_explanation_figure_has_no_ground_truth_panel(explainer):
  import matplotlib.pyplot as plt
  image = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  probs = np.array([0.7, 0.2, 0.6], np.float32)
  fig = explain.explanation_figure(image, explainer.masks(image), probs, CLASSES, 0.5)
  try:
    assert [ax.get_title() for ax in fig.axes] == ['image', *CLASSES]
    weights = [ax.xaxis.label.get_fontweight() for ax in fig.axes[1:]]
    assert weights == ['bold', 'normal', 'bold']  # bold: predicted, as in the main job's figure
    assert any('bold: predicted (p > 0.5)' in t.get_text() for t in fig.texts)
  finally:
    plt.close(fig)


def test_cli_flag_mistake_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'wysiwyc.explain', '--wokdir=x', 'a.png'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stdout == '' and len(result.stderr.splitlines()) == 1, result.stderr
  assert result.stderr.startswith("error: Unknown command line flag 'wokdir'")


def test_single_label_predicts_its_top_class_whatever_its_probability():
  probs = np.array([0.40, 0.35, 0.25])
  assert explain.predicted_classes(probs, CLASSES, 0.5, multilabel=False) == [CLASSES[0]]
  assert explain.predicted_classes(probs, CLASSES, 0.5, multilabel=True) == []
  summary = explain.scores('x.png', np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3)), probs,
                           CLASSES, 0.5, multilabel=False)
  assert summary['predicted'] == [CLASSES[0]] and summary['threshold'] is None


def test_lists_of_images_of_different_shapes_and_float_pixels_are_refused(explainer):
  images = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
  with pytest.raises(errors.UserError, match=r'Images of different shapes in one list'):
    explainer.masks(images)
  assert explainer.masks([np.zeros((8, 8, 3), np.uint8)] * 2).shape[:3] == (2, 8, 8)
  with pytest.raises(errors.UserError, match='normalize takes uint8 pixels'):
    explain.normalize(np.zeros((1, 4, 4, 3), np.float32))
