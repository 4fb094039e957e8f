"""Synthetic shapes: a TFDS data set whose objects and background are known exactly.

Each image shows 1..`max_objects` filled shapes on a textured background, with distractor
marks (lines, scribbles, dots) that belong to no class. The classes differ by SHAPE ONLY:
colour, size, rotation and position are drawn independently of the class, so nothing but
the outline tells the class. Later objects occlude earlier ones; a placement that would hide
more than `1 - min_visible_fraction` of an earlier object is redrawn, so every object keeps
a visible part. Distractors are painted before the objects: they are background.

By default the objects are flat-coloured with hard edges. `object_texture` gives each object a
pattern of its own (noise, stripes or a gradient between its colour and a second one) and
`edge_blur` blends it in through its Gaussian-blurred mask (soft edges, partly see-through at
the rim); both are drawn from a random stream of their own after the objects are placed, so
they change no object's position, class, colour or mask. The mask of an object holds the pixels
whose centre it covers, on top, and the blend is >= 1/2 there and <= 1/2 elsewhere.

Stored features (small on disk: two PNGs and a few bytes per example):
  image         (H, W, 3) uint8 PNG
  segmentation  (H, W, 1) uint8 PNG label map: 0 = background, c + 1 = class c (top object)
  labels        (C,) uint8 multi-hot: class c is present iff its label appears in segmentation
  objects       sequence, in drawing order: label (ClassLabel, holds the class names) and
                visible_pixels (int32, after occlusion)
  cue_mask      (H, W, 1) uint8 PNG, only with a planted cue (`cue_classes` > 0, see
                `SyntheticParams`): 0 = none, c + 1 = the cue of class c
The pipeline derives per-class masks and the foreground from `segmentation` (`to_standard`).

Generation is deterministic and order-independent: example `i` of split `s` uses
`np.random.default_rng([seed, split_id(s), i])`. Every parameter enters the TFDS config
name (`s{size}_c{classes}_{hash}`; `object_texture` and `edge_blur` only when they are not 0,
and the cue's parameters only when they are not their defaults, so that the default data keep
their name), so other parameters never reuse stale files, and
the same parameters are prepared once into `data_dir` and reused afterwards.

Usage:
  builder = make_builder(data_config)     # data_config.synthetic: default_synthetic_config()
  builder.download_and_prepare()          # no download: ~3 s of one CPU core per 1000 images

Longer than 400 lines because the drawing, its parameters and the TFDS builder are one contract:
every parameter the drawing reads enters the builder's config name, and the generation stays
deterministic per example; split apart, a new parameter could miss the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Callable, Dict, Tuple

import ml_collections
import numpy as np
import PIL.Image
import scipy.ndimage
import tensorflow as tf
import tensorflow_datasets as tfds

SHAPE_NAMES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring', 'heart', 'crescent')
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
BACKGROUND_KINDS = ('noise', 'stripes', 'gradient')
_MAX_PLACEMENT_TRIES = 30
_MAX_COLOUR_TRIES = 10
# Parameters left out of a data set's name while 0 (`SyntheticParams.identity`).
_APPEARANCE_FIELDS = ('object_texture', 'edge_blur')
# The planted cue's parameters, left out of the name while at their defaults (no cue).
_CUE_FIELDS = ('cue_classes', 'cue_size', 'cue_rate_present', 'cue_rate_absent')
# The cue of class c is a flat square of colour CUE_COLOURS[c] (RGB corners: no object's
# uniform random colour comes close but by rare chance).
CUE_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
               (0, 255, 255), (255, 128, 0), (128, 0, 255))
# The test split with the cue's rates exchanged (`SyntheticParams.cue_classes` > 0 only).
SWAPPED_SPLIT = 'test_swapped'
_CUE_MARGIN = 2               # free pixels between a cue and any object or other cue


def default_synthetic_config() -> ml_collections.ConfigDict:
  """Generation parameters (the `synthetic` field of a data config); every one is hashed.
  The defaults and their meaning are those of `SyntheticParams`."""
  return ml_collections.ConfigDict(dataclasses.asdict(SyntheticParams()))


def default_data_config() -> ml_collections.ConfigDict:
  """A complete `data_config` for `wysiwyc.data.pipeline` on the synthetic data set."""
  return ml_collections.ConfigDict(dict(
      name='synthetic', data_dir=None, image_size=64, flip=False, color_jitter=0.0,
      shuffle_buffer=10_000, synthetic=default_synthetic_config()))


# ------------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  """Validated generation parameters (the fields of `default_synthetic_config`)."""
  image_size: int = 64          # side of the generated square images, pixels
  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 500
  num_classes: int = 6          # the first num_classes of SHAPE_NAMES (at most 8)
  min_objects: int = 1          # objects per image, uniform in [min_objects, max_objects]
  max_objects: int = 3
  # Sized so that a 64 px image shows each outline clearly (16-22 px across) and occlusion
  # never hides most of a shape: the class stays recognizable from what is visible.
  min_object_size: float = 0.25  # diameter of the enclosing circle, fraction of image_size
  max_object_size: float = 0.35
  min_visible_fraction: float = 0.75  # an object may lose at most a quarter of its pixels
  num_distractors: int = 3      # distractor marks per image, uniform in [0, num_distractors]
  texture_strength: float = 0.5  # 0 = flat background colour, 1 = full-contrast texture
  noise_std: float = 0.0        # Gaussian pixel noise, fraction of 255 (0.02 triples disk use)
  min_contrast: float = 0.25    # mean RGB distance object/underlying pixels, fraction of 255
  seed: int = 0
  # Drawn on top of the objects' geometry, from a random stream of their own (below), so they
  # change the pixels but never where the objects are. 0 draws as before (and hashes as before).
  object_texture: float = 0.0   # 0 = flat-coloured objects, 1 = full-contrast texture
  edge_blur: float = 0.0        # std of the Gaussian blur of each object's edge, pixels
  # A planted shortcut (off by default): the first `cue_classes` classes each get a cue, a flat
  # square of a fixed colour (CUE_COLOURS) placed at random away from the objects, drawn with
  # probability cue_rate_present in an image that shows its class and cue_rate_absent in one
  # that does not (1 and 0: the cue says the class; equal rates: it says nothing). Drawn from a
  # random stream of its own, so the objects are those of the same data without a cue. With a
  # cue, the split SWAPPED_SPLIT holds the test images with the two rates exchanged.
  cue_classes: int = 0
  cue_size: float = 0.1         # side of the cue square, fraction of image_size
  cue_rate_present: float = 1.0
  cue_rate_absent: float = 0.0

  def __post_init__(self):
    problems = []
    if not 2 <= self.num_classes <= len(SHAPE_NAMES):
      problems.append(f'num_classes must be in [2, {len(SHAPE_NAMES)}]')
    if not 1 <= self.min_objects <= self.max_objects:
      problems.append('need 1 <= min_objects <= max_objects')
    if not 0 < self.min_object_size <= self.max_object_size <= 1:
      problems.append('need 0 < min_object_size <= max_object_size <= 1')
    if self.min_object_size * self.image_size < 4:
      problems.append('min_object_size * image_size must be at least 4 pixels')
    if not 0 <= self.min_visible_fraction <= 1:
      problems.append('min_visible_fraction must be in [0, 1]')
    if min(self.num_train, self.num_validation, self.num_test, self.num_distractors) < 0:
      problems.append('split sizes and num_distractors must be >= 0')
    if min(self.texture_strength, self.noise_std, self.min_contrast, self.seed,
           self.object_texture, self.edge_blur) < 0:
      problems.append('texture_strength, noise_std, min_contrast, seed, object_texture and '
                      'edge_blur must be >= 0')
    if self.object_texture > 1:
      problems.append('object_texture must be in [0, 1]')
    if not 0 <= self.cue_classes <= self.num_classes:
      problems.append('cue_classes must be in [0, num_classes]')
    if not 0 < self.cue_size <= 0.5 or self.cue_size * self.image_size < 1:
      problems.append('cue_size must be in (0, 0.5] and at least 1 pixel')
    if not (0 <= self.cue_rate_present <= 1 and 0 <= self.cue_rate_absent <= 1):
      problems.append('cue_rate_present and cue_rate_absent must be in [0, 1]')
    if problems:
      raise ValueError('Invalid synthetic data config: ' + '; '.join(problems))

  @classmethod
  def from_config(cls, config) -> 'SyntheticParams':
    """From a ConfigDict/dict; unknown keys are an error, missing keys take the defaults."""
    values = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
      raise ValueError(f'Unknown synthetic data config keys {unknown}; known: {sorted(defaults)}')
    # Coerce to the field types, so that 0 and 0.0 (or 6 and 6.0) hash to the same name.
    typed = {}
    for key, value in values.items():
      kind = type(defaults[key])
      if kind is int and float(value) != int(value):
        raise ValueError(f'synthetic.{key} must be an integer, got {value!r}')
      typed[key] = kind(value)
    return cls(**typed)

  @property
  def class_names(self) -> Tuple[str, ...]:
    return SHAPE_NAMES[:self.num_classes]

  @property
  def split_sizes(self) -> Dict[str, int]:
    sizes = {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}
    if self.cue_classes:
      sizes[SWAPPED_SPLIT] = self.num_test
    return sizes

  @property
  def draws_natural(self) -> bool:
    """Whether the objects are drawn textured and/or with blurred edges."""
    return self.object_texture > 0 or self.edge_blur > 0

  def identity(self) -> Dict[str, object]:
    """The parameters that name the data set: all of them, but the appearance parameters only
    when they are on, so that data made before they existed keep their name."""
    values = dataclasses.asdict(self)
    for key in _APPEARANCE_FIELDS:
      if values[key] == 0:
        del values[key]
    for field in dataclasses.fields(self):
      if field.name in _CUE_FIELDS and values[field.name] == field.default:
        del values[field.name]
    return values

  def config_name(self) -> str:
    """A TFDS config name that changes whenever any parameter changes."""
    canonical = json.dumps(self.identity(), sort_keys=True)
    digest = hashlib.sha1(canonical.encode()).hexdigest()[:10]
    return f's{self.image_size}_c{self.num_classes}_{digest}'


# --------------------------------------------------------------------------- shape outlines
# Each outline maps local coordinates (u, v), the shape's enclosing circle being the unit
# disk, to a boolean "inside" array.


def _star_polygon(u, v, points: int, inner_radius: float):
  """Inside a star with `points` outer vertices on the unit circle; regular polygon when
  inner_radius = cos(pi / points)."""
  sector = 2 * np.pi / points
  angle = np.mod(np.arctan2(v, u), sector)
  angle = np.minimum(angle, sector - angle)     # fold by symmetry into [0, sector / 2]
  radius = np.hypot(u, v)
  x, y = radius * np.cos(angle), radius * np.sin(angle)
  # Edge from the outer vertex (1, 0) to the inner vertex; the origin lies on its left.
  ex, ey = inner_radius * np.cos(sector / 2) - 1.0, inner_radius * np.sin(sector / 2)
  return ex * y - ey * (x - 1.0) >= 0


def _circle(u, v):
  return u * u + v * v <= 1.0


def _square(u, v):
  return _star_polygon(u, v, 4, np.cos(np.pi / 4))


def _triangle(u, v):
  return _star_polygon(u, v, 3, np.cos(np.pi / 3))


def _star(u, v):
  return _star_polygon(u, v, 5, 0.45)


def _cross(u, v):
  au, av = np.abs(u), np.abs(v)
  arm, half_width = 0.95, 0.3
  return ((au <= half_width) & (av <= arm)) | ((av <= half_width) & (au <= arm))


def _ring(u, v):
  r2 = u * u + v * v
  return (r2 <= 1.0) & (r2 >= 0.5 ** 2)


def _heart(u, v):
  x, y = 1.28 * u, 1.28 * v + 0.2      # the classic sextic heart, fitted into the unit disk
  return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0


def _crescent(u, v):
  return _circle(u, v) & ((u - 0.45) ** 2 + v * v >= 0.75 ** 2)


SHAPES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'circle': _circle, 'square': _square, 'triangle': _triangle, 'star': _star,
    'cross': _cross, 'ring': _ring, 'heart': _heart, 'crescent': _crescent}
assert tuple(SHAPES) == SHAPE_NAMES


def rasterize_shape(name: str, size: int, center: Tuple[float, float], radius: float,
                    angle: float) -> np.ndarray:
  """Boolean (size, size) mask of shape `name`, enclosing circle `radius` pixels around
  `center` = (row, col), rotated by `angle` radians; pixel (i, j) has centre (i+.5, j+.5)."""
  mask = np.zeros((size, size), bool)
  (r0, r1, c0, c1), inside = _rasterize_in_box(name, size, center, radius, angle)
  mask[r0:r1, c0:c1] = inside
  return mask


def _rasterize_in_box(name, size, center, radius, angle):
  """The shape's mask inside its clipped bounding box, and the box (r0, r1, c0, c1)."""
  cy, cx = center
  r0, r1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, size)
  c0, c1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, size)
  dy = (np.arange(r0, r1) + 0.5 - cy)[:, None]
  dx = (np.arange(c0, c1) + 0.5 - cx)[None, :]
  cos, sin = np.cos(angle), np.sin(angle)
  u = (dx * cos + dy * sin) / radius
  v = (dy * cos - dx * sin) / radius
  return (r0, r1, c0, c1), SHAPES[name](u, v)


# ------------------------------------------------------------------------------ backgrounds


def _bilinear_upsample(grid: np.ndarray, size: int) -> np.ndarray:
  """(g, g) -> (size, size) by bilinear interpolation, corners aligned."""

  def weights(n_in):
    pos = np.linspace(0, n_in - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w = np.zeros((size, n_in))
    w[np.arange(size), lo] = 1 - frac
    w[np.arange(size), lo + 1] = frac
    return w

  w = weights(grid.shape[0])
  return w @ grid @ w.T


def _background_pattern(rng: np.random.Generator, size: int, zoom: int = 1) -> np.ndarray:
  """A (size, size) pattern in [0, 1]: smooth noise, stripes or a linear gradient; `zoom`
  multiplies the noise's cells and the stripes' frequency."""
  kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
  ys = (zoom * (np.arange(size) + 0.5) / size)[:, None]
  xs = ys.T
  if kind == 'noise':
    cells = zoom * int(rng.integers(2, 7))
    return _bilinear_upsample(rng.random((cells + 1, cells + 1)), size)
  direction = rng.uniform(0, 2 * np.pi)
  along = xs * np.cos(direction) + ys * np.sin(direction)
  if kind == 'stripes':
    frequency = rng.uniform(1.5, 6.0)
    return 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + rng.uniform(0, 2 * np.pi))
  return (along - along.min()) / max(float(along.max() - along.min()), 1e-6)


def _background(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
  """Float (size, size, 3) in 0..255: a random base colour blended towards a second colour."""
  base, other = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  pattern = np.clip(strength * _background_pattern(rng, size), 0.0, 1.0)
  pattern = np.broadcast_to(pattern, (size, size))[..., None]
  return base + pattern * (other - base)


# ------------------------------------------------------------------------------ distractors


def _segment_distance(ys, xs, p, q):
  """Distance from the points (ys, xs) to the segment p-q (points as (row, col))."""
  d = q - p
  t = ((ys - p[0]) * d[0] + (xs - p[1]) * d[1]) / max(float(d @ d), 1e-9)
  t = np.clip(t, 0.0, 1.0)
  return np.hypot(ys - (p[0] + t * d[0]), xs - (p[1] + t * d[1]))


def _distractor_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """One mark that belongs to no class: a straight line, a scribble or a small dot."""
  kind = rng.integers(3)
  if kind == 2:  # dot: far smaller than any object
    radius = rng.uniform(0.8, max(1.2, 0.04 * size))
    return rasterize_shape('circle', size, tuple(rng.uniform(0, size, 2)), radius, 0.0)
  if kind == 0:  # straight line
    points = rng.uniform(0, size, (2, 2))
  else:  # scribble: a short random walk
    steps = rng.normal(0, 0.15 * size, (int(rng.integers(2, 6)), 2))
    points = rng.uniform(0, size, 2) + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
  half_width = rng.uniform(0.5, 1.2)
  # Only the pixels of the polyline's bounding box (plus the width) can be reached.
  lo = np.clip(np.floor(points.min(0) - half_width), 0, size).astype(int)
  hi = np.clip(np.ceil(points.max(0) + half_width) + 1, 0, size).astype(int)
  ys = (np.arange(lo[0], hi[0]) + 0.5)[:, None]
  xs = (np.arange(lo[1], hi[1]) + 0.5)[None, :]
  distance = np.full((hi[0] - lo[0], hi[1] - lo[1]), np.inf)
  for p, q in zip(points[:-1], points[1:]):
    distance = np.minimum(distance, _segment_distance(ys, xs, p, q))
  mask = np.zeros((size, size), bool)
  mask[lo[0]:hi[0], lo[1]:hi[1]] = distance <= half_width
  return mask


# ---------------------------------------------------------------------------------- examples


def _pick_colour(rng, canvas_pixels: np.ndarray, min_distance: float) -> np.ndarray:
  """A uniform random colour, redrawn while it is too close to the pixels it will cover.

  The test looks only at the canvas, never at the class, so colour stays class-independent.
  """
  best, best_distance = None, -1.0
  for _ in range(_MAX_COLOUR_TRIES):
    colour = rng.uniform(0, 255, 3)
    distance = float(np.linalg.norm(canvas_pixels - colour, axis=-1).mean())
    if distance >= min_distance:
      return colour
    if distance > best_distance:
      best, best_distance = colour, distance
  return best


def generate_example(params: SyntheticParams, split: str, index: int) -> dict:
  """Example `index` of `split`: a pure function of (params, split, index).

  Returns numpy arrays: image (H,W,3) uint8, segmentation (H,W) uint8 (0 = background,
  c + 1 = class c), labels (C,) uint8, and in drawing order object_labels (K,) int64,
  object_areas (K,) int32 (pixels when drawn) and visible_pixels (K,) int32 (at the end);
  with a cue (`params.cue_classes` > 0) also cue_mask (H,W) uint8 (0 = none, c + 1 = the cue
  of class c). SWAPPED_SPLIT example `index` is test example `index` with the cue's rates
  exchanged.
  """
  swapped = split == SWAPPED_SPLIT
  split = 'test' if swapped else split
  rng = np.random.default_rng([params.seed, SPLIT_IDS[split], index])
  size = params.image_size
  canvas = _background(rng, size, params.texture_strength)
  for _ in range(int(rng.integers(0, params.num_distractors + 1))):
    canvas[_distractor_mask(rng, size)] = rng.uniform(0, 255, 3)

  background = canvas.copy()
  owner = np.full((size, size), -1, np.int64)  # index of the top object at each pixel
  classes, areas, masks, colours = [], [], [], []
  for _ in range(int(rng.integers(params.min_objects, params.max_objects + 1))):
    label = int(rng.integers(params.num_classes))  # drawn once: a retry never changes it
    for _ in range(_MAX_PLACEMENT_TRIES):
      radius = 0.5 * size * rng.uniform(params.min_object_size, params.max_object_size)
      center = rng.uniform(radius, size - radius, 2)
      angle = rng.uniform(0, 2 * np.pi)
      (r0, r1, c0, c1), inside = _rasterize_in_box(SHAPE_NAMES[label], size, center, radius,
                                                   angle)
      mask = np.zeros((size, size), bool)
      mask[r0:r1, c0:c1] = inside
      if classes:
        kept = np.bincount(owner[~mask & (owner >= 0)], minlength=len(classes))
        if np.any(kept < params.min_visible_fraction * np.asarray(areas)):
          continue
      colour = _pick_colour(rng, canvas[mask], params.min_contrast * 255)
      canvas[mask] = colour
      owner[mask] = len(classes)
      classes.append(label)
      areas.append(int(mask.sum()))
      masks.append(mask)
      colours.append(colour)
      break

  if params.draws_natural:  # the same objects, textured and/or with soft edges
    appearance_rng = np.random.default_rng([params.seed, SPLIT_IDS[split], index, 1])
    canvas = _draw_natural(appearance_rng, background, masks, colours, params)
  cue_mask = None
  if params.cue_classes:  # after the objects, beside them: it hides none of their pixels
    cue_rng = np.random.default_rng([params.seed, SPLIT_IDS[split], index, 2])
    cue_mask = _draw_cues(cue_rng, canvas, owner >= 0, set(classes), params, swapped)
  if params.noise_std > 0:
    canvas = canvas + rng.normal(0, params.noise_std * 255, canvas.shape)
  image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
  class_of_owner = np.asarray([-1] + classes, np.int64)
  segmentation = (class_of_owner[owner + 1] + 1).astype(np.uint8)
  labels = (np.bincount(segmentation.ravel(), minlength=params.num_classes + 1)[1:] > 0)
  visible = np.bincount(owner[owner >= 0], minlength=len(classes)).astype(np.int32)
  example = dict(image=image, segmentation=segmentation, labels=labels.astype(np.uint8),
                 object_labels=np.asarray(classes, np.int64),
                 object_areas=np.asarray(areas, np.int32), visible_pixels=visible)
  if cue_mask is not None:
    example['cue_mask'] = cue_mask
  return example


def _draw_cues(rng, canvas: np.ndarray, occupied: np.ndarray, present, params,
               swapped: bool) -> np.ndarray:
  """Paints the cue of each cued class (in place) with its rate given whether the class is in
  `present`, at a random free place `_CUE_MARGIN` px away from `occupied` pixels and other
  cues (skipped if none is found); returns the cue label map (0 = none, c + 1 = class c)."""
  size = params.image_size
  side = max(1, int(round(params.cue_size * size)))
  cue_mask = np.zeros((size, size), np.uint8)
  blocked = scipy.ndimage.binary_dilation(occupied, np.ones((3, 3), bool), _CUE_MARGIN)
  for label in range(params.cue_classes):
    rates = (params.cue_rate_present, params.cue_rate_absent)
    rate = rates[(label in present) == swapped]
    if rng.random() >= rate:
      continue
    for _ in range(_MAX_PLACEMENT_TRIES):
      row, col = rng.integers(0, size - side + 1, 2)
      if blocked[row:row + side, col:col + side].any():
        continue
      canvas[row:row + side, col:col + side] = CUE_COLOURS[label]
      cue_mask[row:row + side, col:col + side] = label + 1
      lo_r, lo_c = max(row - _CUE_MARGIN, 0), max(col - _CUE_MARGIN, 0)
      blocked[lo_r:row + side + _CUE_MARGIN, lo_c:col + side + _CUE_MARGIN] = True
      break
  return cue_mask


def _object_appearance(rng, size: int, colour: np.ndarray, strength: float) -> np.ndarray:
  """Float (size, size, 3): `colour` blended by `strength` x a pattern towards a random second
  colour. The pattern is a background pattern at 3x its frequency (objects are smaller)."""
  if strength == 0:
    return np.broadcast_to(colour, (size, size, 3))
  pattern = _background_pattern(rng, size, zoom=3)[..., None]
  return colour + strength * pattern * (rng.uniform(0, 255, 3) - colour)


def _draw_natural(rng, background: np.ndarray, masks, colours, params) -> np.ndarray:
  """Paints the objects (boolean masks, in drawing order, with their base colours) over
  `background`: each one textured (`params.object_texture`) and alpha-blended through its mask
  blurred by `params.edge_blur` px, so that its edge is soft and it covers what lies beneath
  in proportion. The blend stays >= 1/2 inside the mask and <= 1/2 outside it (a concave
  corner's blur would spill over more): the mask holds the pixels the object dominates."""
  canvas = background.copy()
  for mask, colour in zip(masks, colours):
    alpha = mask.astype(np.float64)
    if params.edge_blur > 0:
      blurred = scipy.ndimage.gaussian_filter(alpha, params.edge_blur)
      alpha = np.where(mask, np.maximum(blurred, 0.5), np.minimum(blurred, 0.5))
    appearance = _object_appearance(rng, params.image_size, colour, params.object_texture)
    canvas = canvas + alpha[..., None] * (appearance - canvas)
  return canvas


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


# ------------------------------------------------------------------------------ TFDS builder


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """A TFDS BuilderConfig carrying the generation parameters."""
  params: SyntheticParams = dataclasses.field(default_factory=SyntheticParams)

  @classmethod
  def from_params(cls, params: SyntheticParams) -> 'SyntheticShapesConfig':
    return cls(name=params.config_name(),
               description=json.dumps(params.identity(), sort_keys=True),
               params=params)


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes on textured backgrounds, with exact per-class masks. Generated, never downloaded."""

  VERSION = tfds.core.Version('1.0.0')  # bump when the drawing code changes
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  @property
  def params(self) -> SyntheticParams:
    return self.builder_config.params

  def _info(self) -> tfds.core.DatasetInfo:
    p = self.params
    features = {
        'image': tfds.features.Image(shape=(p.image_size, p.image_size, 3)),
        'segmentation': tfds.features.Image(shape=(p.image_size, p.image_size, 1)),
        'labels': tfds.features.Tensor(shape=(p.num_classes,), dtype=np.uint8),
        'objects': tfds.features.Sequence({
            'label': tfds.features.ClassLabel(names=p.class_names),
            'visible_pixels': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
    }
    if p.cue_classes:  # label map of the cues: 0 = none, c + 1 = the cue of class c
      features['cue_mask'] = tfds.features.Image(shape=(p.image_size, p.image_size, 1))
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split)
            for split, count in self.params.split_sizes.items() if count > 0}

  def _generate_examples(self, split):
    for index in range(self.params.split_sizes[split]):
      example = generate_example(self.params, split, index)
      record = {
          'image': _png(example['image']),
          'segmentation': _png(example['segmentation']),
          'labels': example['labels'],
          'objects': {'label': example['object_labels'],
                      'visible_pixels': example['visible_pixels']},
      }
      if 'cue_mask' in example:
        record['cue_mask'] = _png(example['cue_mask'])
      yield index, record


# --------------------------------------------------------------------- adapter for pipeline


def make_builder(data_config) -> SyntheticShapes:
  """The builder for `data_config.synthetic` in `data_config.data_dir` (not yet prepared)."""
  synthetic_config = data_config.get('synthetic', None)
  if synthetic_config is None:
    synthetic_config = default_synthetic_config()
  params = SyntheticParams.from_config(synthetic_config)
  return SyntheticShapes(config=SyntheticShapesConfig.from_params(params),
                         data_dir=data_config.get('data_dir', None))


def class_names(builder: tfds.core.DatasetBuilder) -> Tuple[str, ...]:
  return tuple(builder.info.features['objects']['label'].names)


def to_standard(example: Dict[str, tf.Tensor], num_classes: int) -> Dict[str, tf.Tensor]:
  """Raw TFDS example -> {'image' uint8 (H,W,3), 'labels' (C,), 'class_masks' uint8 (H,W,C)}."""
  segmentation = tf.cast(example['segmentation'][..., 0], tf.int32)
  class_masks = tf.cast(segmentation[..., None] == tf.range(1, num_classes + 1), tf.uint8)
  return {'image': example['image'], 'labels': example['labels'], 'class_masks': class_masks}
