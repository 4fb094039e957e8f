r"""Writes a synthetic data set of textured blobs as a folder in the manifest layout (docs/own_data.md).

  python experiments/make_texture_folder.py --out=/tmp/textures --num_train=3000

A second stand-in for a user's own labelled images, of another look than the project's flat
shapes: the class is a *texture*, not an outline. Each 64x64 image has a smooth random colour
gradient for background and 1-3 objects, each a random blob (a rotated ellipse with a wobbly
rim, 30-50% of the image side across: smaller blobs show too few periods of their texture to
tell one class from another) filled with one texture family in two random colours:

  stripes  parallel bands, random angle, period 4-8 px
  checker  checkerboard, cells 3-6 px, random rotation
  dots     a rotated lattice of disks, spacing 5-8 px
  grid     a rotated lattice of thin (1 px) lines, spacing 4-7 px
  noise    speckle: every pixel one of the two colours at random
  waves    sinuous bands, period 5-8 px (the sixth class, with --num_classes=6)

The object's colours are drawn independently of its class (their mean absolute RGB difference at
least 0.35), so colour carries no label. Later objects occlude earlier ones, leaving at least
70% of each visible; Gaussian noise (std 0.03) covers the whole image, so its absence marks no
object. An image may show one class twice; its labels are the set of classes present.

DIR/classes.txt, DIR/{train,validation,test}.csv (image,labels,mask), DIR/images/<split>_<i>.png
and DIR/masks/<split>_<i>.png (mode L, pixel = class index + 1 of the object visible there,
0 = background). Deterministic from --seed (numpy and Pillow only); 3,600 images take seconds.
"""

import csv
import os
import sys
from typing import List, Tuple

from absl import app
from absl import flags
import numpy as np
import PIL.Image

from wysiwyc import runtime  # pylint: disable=g-bad-import-order
runtime.quiet_logs()  # The experiment scripts' convention (this one loads no TensorFlow).

TEXTURES = ('stripes', 'checker', 'dots', 'grid', 'noise', 'waves')  # class i = TEXTURES[i]

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Folder to write (must not exist yet, or be empty).')
flags.DEFINE_integer('num_train', 3000, 'Training images.')
flags.DEFINE_integer('num_validation', 300, 'Validation images (0: none, cut from train).')
flags.DEFINE_integer('num_test', 300, 'Test images (0: no test split).')
flags.DEFINE_integer('image_size', 64, 'Image side in pixels.')
flags.DEFINE_integer('num_classes', 5, f'Texture classes: the first N of {TEXTURES}.')
flags.DEFINE_integer('min_objects', 1, 'Fewest objects an image.')
flags.DEFINE_integer('max_objects', 3, 'Most objects an image.')
flags.DEFINE_integer('seed', 0, 'Seed: the same seed writes the same files.')
flags.mark_flags_as_required(['out'])

SPLITS = ('train', 'validation', 'test')
NOISE_STD = 0.03  # of the whole image, in [0, 1] units
MIN_CONTRAST = 0.35  # mean absolute RGB difference of an object's two colours
MIN_VISIBLE = 0.7  # share of each object left visible by the later ones
SIZE_RANGE = (0.3, 0.5)  # blob diameter as a share of the image side
ASPECT_RANGE = (0.7, 1.0)  # narrow over long axis of a blob
TRIES = 100  # blob placements tried before an image is drawn anew


# ------------------------------------------------------------------------------- generation


def _rotated(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Pixel coordinates (u, v) of `shape`, rotated by a random angle and shifted at random."""
  yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
  angle = rng.uniform(0, np.pi)
  u = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, 100)
  v = -xx * np.sin(angle) + yy * np.cos(angle) + rng.uniform(0, 100)
  return u, v


def texture(kind: str, shape: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """float (H,W) in {0, 1}: which of an object's two colours each pixel takes."""
  u, v = _rotated(shape, rng)
  if kind == 'stripes':
    pattern = (u / rng.uniform(4, 8)) % 1 < 0.5
  elif kind == 'checker':
    cell = rng.uniform(3, 6)
    pattern = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1
  elif kind == 'dots':
    spacing = rng.uniform(5, 8)
    du, dv = (u % spacing) - spacing / 2, (v % spacing) - spacing / 2
    pattern = du ** 2 + dv ** 2 <= (rng.uniform(0.25, 0.35) * spacing) ** 2
  elif kind == 'grid':
    spacing = rng.uniform(4, 7)
    pattern = (u % spacing < 1.2) | (v % spacing < 1.2)
  elif kind == 'noise':
    pattern = rng.random(shape) < 0.5
  elif kind == 'waves':
    bend = rng.uniform(1.5, 3) * np.sin(2 * np.pi * v / rng.uniform(10, 16))
    pattern = ((u + bend) / rng.uniform(5, 8)) % 1 < 0.5
  else:
    raise ValueError(f'Unknown texture {kind!r}; known: {TEXTURES}.')
  return pattern.astype(np.float64)


def blob_mask(size: int, diameter: float, rng: np.random.Generator) -> np.ndarray:
  """bool (size,size): a blob `diameter` px across (a rotated ellipse with a wobbly rim) at a
  random place wholly inside the image."""
  radius = diameter / 2
  centre = rng.uniform(radius, size - radius, 2)
  yy, xx = np.mgrid[:size, :size].astype(np.float64) + 0.5
  angle = rng.uniform(0, np.pi)
  dx, dy = xx - centre[1], yy - centre[0]
  a = dx * np.cos(angle) + dy * np.sin(angle)
  b = (-dx * np.sin(angle) + dy * np.cos(angle)) / rng.uniform(*ASPECT_RANGE)
  theta = np.arctan2(b, a)
  rim = np.full_like(theta, 0.9)  # 0.8 to 1: the blob stays within `diameter`
  for k in (2, 3, 4):
    rim += rng.uniform(-0.033, 0.033) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  return np.hypot(a, b) <= radius * rim


def _colour_pair(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  while True:
    first, second = rng.random(3), rng.random(3)
    if np.abs(first - second).mean() >= MIN_CONTRAST:
      return first, second


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
  """float (size,size,3): a bilinear blend of four random corner colours."""
  corners = rng.random((2, 2, 3))
  t = np.linspace(0, 1, size)[:, None, None]
  s = np.linspace(0, 1, size)[None, :, None]
  top = corners[0, 0] * (1 - s) + corners[0, 1] * s
  bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
  return top * (1 - t) + bottom * t


def _place_blobs(size: int, count: int, rng: np.random.Generator) -> List[np.ndarray]:
  """`count` blob masks in drawing order, each at least MIN_VISIBLE visible under the later
  ones; [] when no such placement was found in TRIES tries."""
  blobs = []
  for _ in range(count):
    for _ in range(TRIES):
      blob = blob_mask(size, rng.uniform(*SIZE_RANGE) * size, rng)
      covered = np.zeros_like(blob)
      visible = []
      for earlier in reversed(blobs + [blob]):
        visible.append((earlier & ~covered).sum() / max(earlier.sum(), 1))
        covered |= earlier
      if blob.any() and min(visible) >= MIN_VISIBLE:
        blobs.append(blob)
        break
    else:
      return []
  return blobs


def draw_example(rng: np.random.Generator, params: dict) -> Tuple[np.ndarray, np.ndarray,
                                                                    List[int]]:
  """One image: uint8 (S,S,3), its mask uint8 (S,S) (class index + 1, 0 background) and its
  sorted labels (class indices present). `params`: image_size, num_classes, min_objects,
  max_objects."""
  size = params['image_size']
  while True:
    count = rng.integers(params['min_objects'], params['max_objects'] + 1)
    blobs = _place_blobs(size, count, rng)
    if blobs:
      break
  image = _background(size, rng)
  mask = np.zeros((size, size), np.uint8)
  for blob in blobs:
    label = int(rng.integers(params['num_classes']))
    first, second = _colour_pair(rng)
    pattern = texture(TEXTURES[label], (size, size), rng)[..., None]
    image[blob] = (first * (1 - pattern) + second * pattern)[blob]
    mask[blob] = label + 1
  image = image + rng.normal(0, NOISE_STD, image.shape)
  image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  labels = sorted(int(value) - 1 for value in np.unique(mask) if value)
  return image, mask, labels


# ---------------------------------------------------------------------------------- writing


def write_split(out: str, split: str, count: int, params: dict, seed: int) -> None:
  """DIR/<split>.csv and its images and masks; image i's draw depends on (seed, split, i) only."""
  with open(os.path.join(out, f'{split}.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'labels', 'mask'])
    for i in range(count):
      rng = np.random.default_rng([seed, SPLITS.index(split), i])
      image, mask, labels = draw_example(rng, params)
      image_path, mask_path = f'images/{split}_{i}.png', f'masks/{split}_{i}.png'
      PIL.Image.fromarray(image, 'RGB').save(os.path.join(out, image_path))
      PIL.Image.fromarray(mask, 'L').save(os.path.join(out, mask_path))
      writer.writerow([image_path, '|'.join(TEXTURES[c] for c in labels), mask_path])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  del argv
  out = FLAGS.out
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    _fail(f'--out={out}: already exists and is not an empty folder; give a new folder.')
  if not 2 <= FLAGS.num_classes <= len(TEXTURES):
    _fail(f'--num_classes={FLAGS.num_classes}: must be 2 to {len(TEXTURES)}.')
  if not 1 <= FLAGS.min_objects <= FLAGS.max_objects:
    _fail(f'--min_objects={FLAGS.min_objects}, --max_objects={FLAGS.max_objects}: need '
          '1 <= min_objects <= max_objects.')
  if FLAGS.num_train < 1:
    _fail(f'--num_train={FLAGS.num_train}: the train split needs one image or more.')
  params = dict(image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
                min_objects=FLAGS.min_objects, max_objects=FLAGS.max_objects)
  os.makedirs(os.path.join(out, 'images'), exist_ok=True)
  os.makedirs(os.path.join(out, 'masks'), exist_ok=True)
  with open(os.path.join(out, 'classes.txt'), 'w') as f:
    f.write('\n'.join(TEXTURES[:FLAGS.num_classes]) + '\n')
  counts = dict(zip(SPLITS, (FLAGS.num_train, FLAGS.num_validation, FLAGS.num_test)))
  for split, count in counts.items():
    if count:
      write_split(out, split, count, params, FLAGS.seed)
      print(f'Wrote {count} {split} images to {os.path.join(out, split + ".csv")}.', flush=True)


if __name__ == '__main__':
  app.run(main)
