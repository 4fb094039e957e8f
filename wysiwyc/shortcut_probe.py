"""The planted-shortcut benchmark's measures (experiments/shortcut.py is its command line).

For each (image, cued class present) pair of the shortcut data (configs/synthetic.py variants
`shortcut` and `shortcut_control`): the cue and object regions, the class map's share of mass on
each (`metrics.mass_shares`), the drop of the class probability when the map's top pixels are
deleted, the classifiers' accuracy on the cued classes with the cue aligned or swapped, and the
reports and figure of the benchmark.
"""

import os
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wysiwyc import attribution
from wysiwyc import checkpointing
from wysiwyc import compare
from wysiwyc import explain
from wysiwyc import metrics
from wysiwyc.data import pipeline
from wysiwyc.data import synthetic


# ----------------------------------------------------------------------------------------------
# Data.


def load_split(config: ml_collections.ConfigDict, split: str, num_images: int,
               batch_size: int) -> Dict[str, np.ndarray]:
  """The first `num_images` (0: all) images of `split` through the pipeline, plus 'cue_mask'
  (H,W) from the stored records, read in the same order."""
  data = compare.load_test_images(config, num_images, batch_size, split=split)
  builder = synthetic.make_builder(config.data)
  records = builder.as_dataset(split=split, shuffle_files=False).take(len(data['image']))
  raw = list(records.as_numpy_iterator())
  if not np.array_equal(np.stack([r['image'] for r in raw]), pipeline.denormalize(data['image'])):
    raise RuntimeError(f'The cue masks of {split!r} are not in the order of its images.')
  data['cue_mask'] = np.stack([r['cue_mask'][..., 0] for r in raw]).astype(np.int32)
  return data


def cued_pairs(data: Dict[str, np.ndarray], num_cued: int) -> np.ndarray:
  """(P, 2) (image, class) pairs of a cued class that is present and whose cue is drawn."""
  pairs = [(i, c) for i in range(len(data['image'])) for c in range(num_cued)
           if data['labels'][i, c] > 0.5 and np.any(data['cue_mask'][i] == c + 1)]
  return np.asarray(pairs, np.int64).reshape(-1, 2)


def pair_regions(data, pairs: np.ndarray) -> np.ndarray:
  """(P, 2, H, W) float: each pair's cue and object."""
  cue = (data['cue_mask'][pairs[:, 0]] == (pairs[:, 1] + 1)[:, None, None])
  obj = data['class_masks'][pairs[:, 0], :, :, pairs[:, 1]] > 0.5
  return np.stack([cue, obj], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Measurements.


def cued_accuracy(classify: Callable, data, num_cued: int, batch_size: int) -> Dict[str, float]:
  """Accuracy of the thresholded probabilities on the cued classes and on the others."""
  probs = np.concatenate([np.asarray(classify(data['image'][s:s + batch_size]))
                          for s in range(0, len(data['image']), batch_size)])
  correct = (probs > 0.5) == (data['labels'] > 0.5)
  return {'cued': float(correct[:, :num_cued].mean()),
          'other': float(correct[:, num_cued:].mean())}


def top_pixels(maps: np.ndarray, fraction: float) -> np.ndarray:
  """(P,H,W) bool: the top `fraction` of each map's pixels (ties in raster order)."""
  count = int(round(fraction * maps.shape[1] * maps.shape[2]))
  ranks = np.asarray(metrics.saliency_ranks(jnp.asarray(maps))).reshape(maps.shape)
  return ranks < count


def deletion_drop(classify: Callable, images: np.ndarray, removed: np.ndarray,
                  classes: np.ndarray) -> float:
  """Mean drop of the pairs' class probability when their `removed` (P,H,W) pixels are set to
  zero (the mean colour of normalized images)."""
  def probability(x):
    return np.take_along_axis(np.asarray(classify(x)), classes[:, None], axis=-1)[:, 0]
  deleted = np.where(removed[..., None], 0.0, images).astype(np.float32)
  return float(np.mean(probability(images) - probability(deleted)))


def shares(maps: np.ndarray, regions: np.ndarray) -> Dict[str, float]:
  """Mean cue and object shares of the pairs' maps (P,H,W) over their regions (P,2,H,W)."""
  values = np.asarray(jax.vmap(metrics.mass_shares)(jnp.asarray(maps), jnp.asarray(regions)))
  return {'cue_share': float(values[:, 0].mean()), 'object_share': float(values[:, 1].mean())}


def method_context(loaded: explain.Explainer, workdir: str, names: List[str],
                   options) -> compare.Context:
  """The comparison's context for `loaded`'s classifier (a Real-Time Saliency explainer trained
  against it when `names` has one)."""
  ctx = compare.Context(
      classifier=attribution.Classifier(loaded.classifier, loaded.multilabel),
      classifier_variables=loaded.classifier_variables, explainer=loaded,
      image_size=loaded.image_size, num_classes=len(loaded.class_names), options=options)
  if 'real_time_saliency' in names:
    ctx.rts = compare.ensure_rts(loaded.config, workdir, None, options['rts_steps'])
  return ctx


# ----------------------------------------------------------------------------------------------
# Reports.


def _cell(value: float) -> str:
  return f'{value:.3f}'


def reading(results) -> List[str]:
  """One line per method: where its mass goes for each classifier (larger share named)."""
  lines = []
  for method, by_classifier in results.items():
    parts = []
    for name, row in by_classifier.items():
      more = 'cue' if row['cue_share'] > row['object_share'] else 'object'
      parts.append(f'{name}: more on the {more} ({_cell(row["cue_share"])} vs '
                   f'{_cell(row["object_share"])})')
    lines.append(f'- {method}: ' + '; '.join(parts) + '.')
  return lines


def classifier_table(report: dict) -> List[str]:
  """The classifiers' accuracy on the cued classes, aligned and swapped (other classes in
  brackets)."""
  lines = ['| classifier | aligned | swapped | drop |', '|---|---:|---:|---:|']
  for name, row in report['classifiers'].items():
    lines.append(f'| {name} | {_cell(row["aligned_accuracy"])} '
                 f'({_cell(row["aligned_accuracy_other"])}) | {_cell(row["swapped_accuracy"])} '
                 f'({_cell(row["swapped_accuracy_other"])}) | '
                 f'{_cell(row["aligned_accuracy"] - row["swapped_accuracy"])} |')
  return lines


def method_table(report: dict) -> List[str]:
  """Each method's (and reference's) cue and object shares and deletion drop, per classifier."""
  lines = ['| method | shortcut: cue | shortcut: object | control: cue | control: object | '
           'shortcut: deletion | control: deletion |', '|---|---:|---:|---:|---:|---:|---:|']
  rows = {**report['methods'], **report['references']}
  for method, row in rows.items():
    s, c = row['shortcut'], row['control']
    cells = [s.get('cue_share'), s.get('object_share'), c.get('cue_share'),
             c.get('object_share'), s.get('deletion_drop'), c.get('deletion_drop')]
    lines.append(f'| {method} | ' + ' | '.join('' if v is None else _cell(v) for v in cells)
                 + ' |')
  return lines


def write_reports(out_dir: str, report: dict) -> None:
  """`shortcut.json`, `shortcut.md` and `shortcut_summary.md` (the two tables alone, for
  experiments/fill_tables.py)."""
  checkpointing.write_json_atomic(os.path.join(out_dir, 'shortcut.json'), report)
  settings = report['settings']
  deletion_note = ('Share of the class map\'s mass on the cue and on the object; deletion: drop '
                   f'of the class probability when the top {settings["deletion_fraction"]:.0%} '
                   'of the map is set to the mean colour.')
  lines = ['# A planted shortcut: cue or object?', '',
           f'{settings["num_images"]} aligned test images, {settings["num_pairs"]} (image, cued '
           f'class) pairs; {settings["device"]}.', '',
           '## The classifiers (accuracy on the cued classes; other classes in brackets)', '']
  lines += classifier_table(report)
  lines += ['', '## Where each method puts the cued class\'s mass', '', deletion_note, '']
  lines += method_table(report)
  lines += ['', 'References: *uniform* is a constant map (its shares are the areas: chance '
            'level); *cue mask* and *object mask* delete the cue or the object alone.', '',
            '## Reading', ''] + reading(report['methods'])
  lines += ['', '## Settings', ''] + [f'- {k}: {v}' for k, v in settings.items()]
  checkpointing.write_text_atomic(os.path.join(out_dir, 'shortcut.md'), '\n'.join(lines) + '\n')
  summary = (['Accuracy on the cued classes (other classes in brackets):', '']
             + classifier_table(report) + ['', deletion_note, ''] + method_table(report))
  checkpointing.write_text_atomic(os.path.join(out_dir, 'shortcut_summary.md'),
                                  '\n'.join(summary) + '\n')


def save_figure(data, pairs: np.ndarray, pair_maps: Dict[str, Dict[str, np.ndarray]],
                class_names, path: str, num_rows: int) -> None:
  """Rows: (image, cued class) pairs; columns: the image with the cue (cyan) and object (yellow)
  outlined, then each method's map of that class for each classifier."""
  from wysiwyc import viz  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = min(num_rows, len(pairs))
  columns = [(m, c) for m in pair_maps for c in pair_maps[m]]
  fig, axes = plt.subplots(n, len(columns) + 1, figsize=(1.3 * (len(columns) + 1), 1.4 * n),
                           squeeze=False)
  images = pipeline.denormalize(data['image'][pairs[:n, 0]])
  regions = pair_regions(data, pairs[:n])
  for row in range(n):
    axes[row, 0].imshow(images[row])
    for region, colour in zip(regions[row], ('cyan', 'yellow')):
      axes[row, 0].contour(region, levels=[0.5], colors=colour, linewidths=0.8)
    axes[row, 0].set_ylabel(class_names[pairs[row, 1]], fontsize=7)
    for col, (method, name) in enumerate(columns):
      axes[row, col + 1].imshow(viz.overlay(images[row], pair_maps[method][name][row]))
  axes[0, 0].set_title('image\ncue, object', fontsize=6)
  for col, (method, name) in enumerate(columns):
    axes[0, col + 1].set_title(f'{method.replace("_", " ")}\n{name}', fontsize=6)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  viz.save_figure(fig, path)


def measure_classifiers(classifiers: Dict[str, Callable], split_data, num_cued: int,
                        batch_size: int) -> Dict[str, Dict[str, float]]:
  """Each classifier's accuracy on the cued (and other) classes, aligned and swapped."""
  out = {}
  for name, classify in classifiers.items():
    aligned = cued_accuracy(classify, split_data['test'], num_cued, batch_size)
    swapped = cued_accuracy(classify, split_data[synthetic.SWAPPED_SPLIT], num_cued, batch_size)
    out[name] = {'aligned_accuracy': aligned['cued'], 'swapped_accuracy': swapped['cued'],
                 'aligned_accuracy_other': aligned['other'],
                 'swapped_accuracy_other': swapped['other']}
  return out
