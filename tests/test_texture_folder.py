"""experiments/make_texture_folder.py: a tiny textured-blob folder written by the script (run as
a subprocess), read back as the manifest layout: files, sizes, labels that agree with the masks,
determinism from the seed, refusal of a non-empty --out, and the project's folder reader."""

import csv
import os
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest

from tests.conftest import REPO
from wysiwyc.data import folder

SCRIPT = os.path.join(REPO, 'experiments', 'make_texture_folder.py')
COUNTS = {'train': 12, 'validation': 4, 'test': 4}
CLASSES = ['stripes', 'checker', 'dots', 'grid', 'noise']


def _run(out, *args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, SCRIPT, f'--out={out}', *[f'--num_{k}={v}' for k, v in COUNTS.items()],
       *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _written(out, *args):
  result = _run(out, *args)
  assert result.returncode == 0, result.stderr
  return str(out)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  return _written(tmp_path_factory.mktemp('textures') / 'seed0')


def _rows(root, split):
  with open(os.path.join(root, f'{split}.csv'), newline='') as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ['image', 'labels', 'mask']
    return list(reader)


def _image_bytes(root):
  return {name: open(os.path.join(root, 'images', name), 'rb').read()
          for name in sorted(os.listdir(os.path.join(root, 'images')))}


def test_files_and_classes(written):
  with open(os.path.join(written, 'classes.txt')) as f:
    assert f.read().splitlines() == CLASSES
  for split, count in COUNTS.items():
    rows = _rows(written, split)
    assert len(rows) == count
    assert [row['image'] for row in rows] == [f'images/{split}_{i}.png' for i in range(count)]
    assert [row['mask'] for row in rows] == [f'masks/{split}_{i}.png' for i in range(count)]
  assert len(os.listdir(os.path.join(written, 'images'))) == sum(COUNTS.values())
  assert len(os.listdir(os.path.join(written, 'masks'))) == sum(COUNTS.values())


def test_images_masks_and_labels_agree(written):
  seen = set()
  for split in COUNTS:
    for row in _rows(written, split):
      with PIL.Image.open(os.path.join(written, row['image'])) as image:
        assert (image.mode, image.size) == ('RGB', (64, 64))
      with PIL.Image.open(os.path.join(written, row['mask'])) as mask:
        assert (mask.mode, mask.size) == ('L', (64, 64))
        values = np.asarray(mask)
      assert values.max() <= len(CLASSES)
      labels = row['labels'].split('|')
      assert 1 <= len(labels) <= 3 and set(labels) <= set(CLASSES)
      assert {CLASSES.index(name) for name in labels} == {v - 1 for v in np.unique(values) if v}
      seen.update(labels)
  assert len(seen) >= 3  # the classes vary


def test_same_seed_same_bytes_other_seed_other_images(written, tmp_path):
  again = _written(tmp_path / 'again')
  other = _written(tmp_path / 'other', '--seed=1')
  assert _image_bytes(again) == _image_bytes(written)
  other_bytes = _image_bytes(other)
  assert other_bytes.keys() == _image_bytes(written).keys()
  assert all(other_bytes[name] != data for name, data in _image_bytes(written).items())


def test_refuses_a_non_empty_out(tmp_path):
  out = tmp_path / 'full'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  result = _run(out)
  assert result.returncode != 0
  assert str(out) in result.stderr and 'not an empty folder' in result.stderr
  assert os.listdir(out) == ['keep.txt']


def test_the_projects_folder_reader_accepts_it(written):
  data_config = ml_collections.ConfigDict(dict(folder=folder.default_folder_config()))
  data_config.folder.root = written
  listing = folder.read_listing(data_config)
  assert listing.layout == 'manifest'
  assert list(listing.class_names) == CLASSES
  assert {split: len(rows) for split, rows in listing.splits.items()} == COUNTS
  assert all(row.mask is not None for rows in listing.splits.values() for row in rows)
  folder.check_contents(listing)  # reads every image and mask; raises on a bad one
