"""The evaluation stage: the paper's protocol on the test split, results files and figures.

Protocol (DESIGN.md section 1): per image, the masks of its ground-truth classes are merged by
pixel-wise max and compared with the union ground truth (`foreground`); per class, the mask of
class c is compared with the ground truth of class c for every class present in the image. The
Explainer is scored next to the reference masks all_0, all_0.5, all_1 and ground_truth.
"""

import functools
import os
from typing import Callable, Dict, List, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from wysiwyc import checkpointing
from wysiwyc import console
from wysiwyc import data_parallel
from wysiwyc import loop
from wysiwyc import metrics
from wysiwyc import provenance
from wysiwyc import train_steps
from wysiwyc.data import pipeline

SPECIFICITY_KEYS = ('specificity_own_sum', 'specificity_own_count', 'specificity_other_sum',
                    'specificity_other_count')
# Single-label data sets (one class an image, so no pair of present classes for 'other'): the
# probability of the true class keeping the mask of the classifier's runner-up class.
RUNNER_UP_KEYS = ('specificity_runner_up_sum', 'specificity_runner_up_count')
# Why a value of results.json is null (undefined), by its key; said in results.md.
UNDEFINED_REASONS = {
    'specificity_other': 'no test image has two present classes (single-label data: see '
                         'specificity_runner_up)',
    'specificity_other_over_own': 'specificity_other is undefined or specificity_own is 0',
    'specificity_own': 'no test image has a present class',
    'specificity_runner_up_over_own': 'specificity_runner_up is undefined or specificity_own is 0',
}
REFERENCE_METHODS = ('all_0', 'all_0.5', 'all_1', 'ground_truth')
# The first line of a smoke run's results.md (`config.smoke`, set by the `:smoke` variants).
SMOKE_NOTE = ('**Smoke run**: tiny data, models and step counts, to check that every stage runs; '
              'these numbers are not meaningful.')
NO_TEST_NOTE = 'The data set has no test split: no evaluation stage (no metrics).'
NO_MASKS_NOTE = ('The test split has no ground-truth masks: no mask metrics, only the classifier '
                 "accuracies and the class specificity of the explainer's masks.")
# Columns of results.md, in order; results.json holds every metric of `metrics.score_masks`.
TABLE_METRICS = ('iou@0.5', 'per_class_iou@0.5', 'cont_iou', 'mean_f1', 'cont_f1', 'accuracy',
                 'auc', 'saliency', 'object_coverage', 'background_coverage')


def reference_class_masks(class_masks: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Per-class reference masks (B,H,W,C), keyed by method name."""
  return {'all_0': jnp.zeros_like(class_masks), 'all_0.5': jnp.full_like(class_masks, 0.5),
          'all_1': jnp.ones_like(class_masks), 'ground_truth': class_masks}


def saliency_probability(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """(B,) probability of the explained classes for the saliency metric: softmax over classes,
  summed over the image's ground-truth classes (as the authors' evaluation)."""
  return (jax.nn.softmax(logits) * labels).sum(-1)


def classifier_probabilities(logits: jnp.ndarray, multilabel: bool) -> jnp.ndarray:
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)


def score_method(class_masks_pred, batch, classify) -> Dict[str, jnp.ndarray]:
  """Per-image metrics of one method's per-class masks (B,H,W,C) under the paper's protocol."""
  labels = batch['labels']
  merged = metrics.merge_class_masks(class_masks_pred, labels)
  kept_logits = classify(merged[..., None] * batch['image'])
  scores = metrics.score_masks(merged, batch['foreground'],
                               saliency_probability(kept_logits, labels))
  per_class = jax.vmap(jax.vmap(functools.partial(metrics.discrete_iou, threshold=0.5),
                                in_axes=(-1, -1)))(class_masks_pred, batch['class_masks'])
  scores['per_class_iou@0.5'] = (per_class * labels).sum(-1) / jnp.maximum(labels.sum(-1), 1.0)
  scores['_num_classes'] = labels.sum(-1)
  return scores


def make_eval_batch_fn(explainer: nn.Module, classifier: nn.Module, multilabel: bool) -> Callable:
  """(explainer_vars, classifier_vars, batch) -> (per-method per-image scores, extras)."""
  def eval_batch(explainer_variables, classifier_variables, batch):
    masks = jax.nn.sigmoid(explainer.apply(explainer_variables, batch['image'], train=False))
    return score_batch(masks, classifier, classifier_variables, batch, multilabel)
  return eval_batch


def score_batch(masks, classifier, classifier_variables, batch, multilabel: bool):
  """(per-method per-image scores, extras) of per-class masks (B,H,W,C) in [0,1] made for
  `batch` (normalized images, labels, class_masks, foreground), next to the reference masks; the
  classifier is only called (`classifier.apply(variables, images, train=False)`)."""
  classify = lambda images: classifier.apply(classifier_variables, images, train=False)
  methods = {'explainer': masks, **reference_class_masks(batch['class_masks'])}
  # One vmap over the methods keeps the compiled program the size of one method's.
  stacked = jax.vmap(lambda m: score_method(m, batch, classify))(
      jnp.stack(list(methods.values())))
  scores = {name: jax.tree.map(lambda x, i=i: x[i], stacked) for i, name in enumerate(methods)}
  merged = metrics.merge_class_masks(masks, batch['labels'])
  image = batch['image']
  plain, kept, dropped = jnp.split(
      classify(jnp.concatenate([image, merged[..., None] * image,
                                (1 - merged[..., None]) * image])), 3)
  accuracy = lambda logits: train_steps.per_class_accuracy(logits, batch['labels'], multilabel)
  extras = {'accuracy_plain': accuracy(plain), 'accuracy_kept': accuracy(kept),
            'accuracy_dropped': accuracy(dropped),
            'probabilities': classifier_probabilities(plain, multilabel), 'masks': masks,
            **specificity_sums(classify, image, masks, batch['labels'], multilabel,
                               classifier_probabilities(plain, multilabel))}
  return scores, extras


def specificity_sums(classify, images, masks, labels, multilabel: bool,
                     plain_probabilities: Optional[jnp.ndarray] = None
                     ) -> Dict[str, jnp.ndarray]:
  """Per image: sums and counts of the class-specificity probabilities (authors' notebook):
  'own' over present classes t keeping their own mask, 'other' over present t keeping the mask
  of another present class m. Single-label (`multilabel=False`) also 'runner_up': present t
  keeping the mask of the absent class the classifier finds most probable on the whole image
  (`plain_probabilities` (B,C), computed when not given), defined for one class an image."""
  probabilities = metrics.class_specificity(
      lambda x: classifier_probabilities(classify(x), multilabel), images, masks)  # (B,T,M)
  present = labels > 0.5
  pairs = present[:, :, None] & present[:, None, :]
  diagonal = jnp.eye(labels.shape[-1], dtype=bool)[None]
  own, other = pairs & diagonal, pairs & ~diagonal
  sums = {'specificity_own_sum': jnp.sum(probabilities * own, axis=(1, 2)),
          'specificity_own_count': own.sum(axis=(1, 2)).astype(jnp.float32),
          'specificity_other_sum': jnp.sum(probabilities * other, axis=(1, 2)),
          'specificity_other_count': other.sum(axis=(1, 2)).astype(jnp.float32)}
  if multilabel:
    return sums
  if plain_probabilities is None:
    plain_probabilities = classifier_probabilities(classify(images), multilabel)
  runner_up = jnp.argmax(jnp.where(present, -jnp.inf, plain_probabilities), axis=-1)  # (B,)
  kept = jnp.take_along_axis(probabilities, runner_up[:, None, None], axis=2)[..., 0]  # (B,T)
  counted = present & jnp.any(~present, axis=-1, keepdims=True)  # an absent class exists
  sums['specificity_runner_up_sum'] = jnp.sum(kept * counted, axis=-1)
  sums['specificity_runner_up_count'] = counted.sum(-1).astype(jnp.float32)
  return sums


def specificity_summary(sums: Dict[str, float]) -> Dict[str, Optional[float]]:
  """'own', 'other' mean probabilities and their ratio (the paper: 3-9% vs ~56-65% for
  RISE and Real-Time Saliency, as probabilities of the true class); with the runner-up sums
  (single-label data), 'runner_up' and its ratio to 'own'. None where undefined (nothing to
  average, or `own` 0: UNDEFINED_REASONS)."""
  ratio = lambda num, den: num / den if den and num is not None else None
  own = ratio(sums['specificity_own_sum'], sums['specificity_own_count'])
  other = ratio(sums['specificity_other_sum'], sums['specificity_other_count'])
  summary = {'specificity_own': own, 'specificity_other': other,
             'specificity_other_over_own': ratio(other, own),
             'specificity_pairs': sums['specificity_other_count']}
  if 'specificity_runner_up_count' in sums:
    runner_up = ratio(sums['specificity_runner_up_sum'], sums['specificity_runner_up_count'])
    summary.update(specificity_runner_up=runner_up,
                   specificity_runner_up_over_own=ratio(runner_up, own),
                   specificity_runner_up_images=sums['specificity_runner_up_count'])
  return summary


def without_nan(results: dict) -> dict:
  """`results` with every non-finite float (a mean over nothing) replaced by None, which JSON
  writes as null (json.dump would write a bare NaN, which is not JSON)."""
  if isinstance(results, dict):
    return {k: without_nan(v) for k, v in results.items()}
  if isinstance(results, float) and not np.isfinite(results):
    return None
  return results


def undefined_fields(results: dict) -> List[str]:
  """The metrics of `results` that are None (null in results.json), as 'method.metric'."""
  return [f'{method}.{key}' for method, row in results.items()
          if method not in ('provenance', 'note') and isinstance(row, dict)
          for key, value in row.items() if value is None]


def _weighted_means(chunks: List[Dict[str, np.ndarray]], weights: List[np.ndarray]) -> dict:
  means = {}
  w = np.concatenate(weights)
  for key in chunks[0]:
    values = np.concatenate([c[key] for c in chunks]).astype(np.float64)
    ok = (w > 0) & np.isfinite(values)
    means[key] = float(np.sum(values[ok] * w[ok]) / max(np.sum(w[ok]), 1e-12))
  return means


def evaluate_and_report(config, spec, workdir: str, mesh: Mesh, classifier, classifier_variables,
                        explainer, explainer_variables) -> dict:
  """Scores every method on the test split and writes results.json, results.md and figures;
  without a test split only the note that says so and the training curves."""
  if 'test' not in spec.num_examples:
    return _report(config, spec, workdir, {'note': NO_TEST_NOTE}, None)
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  eval_batch = jax.jit(make_eval_batch_fn(explainer, classifier, spec.multilabel),
                       in_shardings=(repl, repl, data), out_shardings=data)
  # The split's first `max_examples` images (0: all), the same whatever the topology.
  dataset = pipeline.make_dataset(
      config.data, 'test', config.eval.batch_size, training=False, seed=config.seed,
      process_index=data_parallel.batch_block(mesh), process_count=jax.process_count(),
      max_examples=config.eval.get('max_examples', 0))
  totals = Totals(spec.multilabel)
  figure_batch: Optional[dict] = None
  for batch in pipeline.as_numpy(dataset):
    sharded = data_parallel.shard_batch(batch, mesh)
    # Every process gets the scores of the whole global batch (other processes' rows too).
    (scores, extras), valid = data_parallel.fetch_global(
        (eval_batch(explainer_variables, classifier_variables, sharded), sharded['valid']))
    totals.add(scores, extras, valid)
    if figure_batch is None:
      batch = data_parallel.fetch_global(sharded)
      figure_batch = {'image': pipeline.denormalize(batch['image']), 'masks': extras['masks'],
                      'class_masks': batch['class_masks'], 'labels': batch['labels'],
                      'probabilities': extras['probabilities']}
  results = totals.results(masked='test' not in spec.unmasked_splits)
  return _report(config, spec, workdir, results, figure_batch)


class Totals:
  """The running sums of `score_batch`'s outputs over the test batches, and the results they
  give (results.json's metrics, before the provenance)."""

  def __init__(self, multilabel: bool):
    self.per_method: Dict[str, list] = {}
    self.class_weights: Dict[str, list] = {}
    self.image_weights, self.classifier_chunks = [], []
    self.specificity = dict.fromkeys(SPECIFICITY_KEYS + (() if multilabel else RUNNER_UP_KEYS),
                                     0.0)
    self.seen = 0

  def add(self, scores: dict, extras: dict, valid: np.ndarray) -> None:
    """One batch's (numpy) scores and extras; `valid` (B,) False on padding rows."""
    valid = valid.astype(np.float64)
    self.seen += int(valid.sum())
    self.image_weights.append(valid)
    for name, values in scores.items():
      self.per_method.setdefault(name, []).append(values)
      self.class_weights.setdefault(name, []).append(valid * values['_num_classes'])
    self.classifier_chunks.append({k: extras[k] for k in extras if k.startswith('accuracy')})
    for key in self.specificity:
      self.specificity[key] += float(np.sum(extras[key] * valid))

  def results(self, masked: bool) -> dict:
    """Without ground-truth masks (`masked=False`) no mask metrics: every one would score
    against empty masks."""
    results = {} if masked else {'note': NO_MASKS_NOTE}
    for name, chunks in (self.per_method.items() if not results else ()):
      image_means = _weighted_means([{k: v for k, v in c.items() if k != 'per_class_iou@0.5'
                                      and not k.startswith('_')} for c in chunks],
                                    self.image_weights)
      # Per-class IoU is a mean over (image, present class) pairs.
      per_class = _weighted_means([{'v': c['per_class_iou@0.5']} for c in chunks],
                                  self.class_weights[name])['v']
      results[name] = {**image_means, 'per_class_iou@0.5': per_class}
    results.setdefault('explainer', {}).update(specificity_summary(self.specificity))
    results['classifier'] = _weighted_means(self.classifier_chunks, self.image_weights)
    results['classifier']['num_test_images'] = self.seen
    return results


def _report(config, spec, workdir: str, results: dict, figure_batch: Optional[dict]) -> dict:
  """Writes results.json, results.md and the figures (the masks' figure when there are test
  images); says the note of the results (what could not be evaluated) if there is one, then the
  main numbers on the console (the whole table is logged at --verbosity=1). Adds the run's
  provenance (`wysiwyc.provenance`) to the results."""
  from wysiwyc import viz  # pylint: disable=g-import-not-at-top
  if 'note' in results:
    logging.warning('%s', results['note'])
  # Read by every process: orbax restores wait for all of them. Written by process 0 only.
  records = {stage: loop.stage_record(os.path.join(workdir, stage))
             for stage in ('classifier', 'distill', 'explainer')}
  histories = {stage: history for stage, (history, _) in records.items()}
  best_epochs = {stage: best for stage, (_, best) in records.items() if best is not None}
  results = {**without_nan(results), 'provenance': provenance.describe(histories)}
  if jax.process_index() == 0:
    write_results(results, workdir, smoke=config.get('smoke', False))
    if figure_batch is not None:
      viz.save_figure(viz.plot_class_masks(**_figure_inputs(figure_batch, config,
                                                            spec.class_names),
                                           multilabel=spec.multilabel),
                      os.path.join(workdir, 'figures', 'masks.png'))
    viz.save_figure(viz.plot_training_curves(histories, best_epochs),
                    os.path.join(workdir, 'figures', 'training.png'))
  console.say(console.results_summary(results))
  logging.debug('Results:\n%s', results_markdown(results))
  return results


def _figure_inputs(batch: dict, config, class_names) -> dict:
  """The figure's images and at most `eval.figure_max_classes` (default 10) class columns: the
  classes present in those images first (most frequent first), then the most probable, so that
  80 (COCO) or 200 (CUB) classes do not make 80 or 200 columns."""
  n = config.eval.get('num_figure_images', 6)
  inputs = {key: np.asarray(value[:n]) for key, value in batch.items()}
  max_classes = config.eval.get('figure_max_classes', 10)
  if len(class_names) > max_classes:
    score = inputs['labels'].sum(0) * n + inputs['probabilities'].max(0)
    keep = np.sort(np.argsort(-score, kind='stable')[:max_classes])
    inputs.update({key: inputs[key][..., keep] for key in ('masks', 'class_masks', 'labels',
                                                          'probabilities')})
    class_names = [class_names[i] for i in keep]
  return {**inputs, 'class_names': list(class_names)}


def write_results(results: dict, workdir: str, smoke: bool = False) -> None:
  """results.json, and results.md, which a smoke run's SMOKE_NOTE opens."""
  checkpointing.write_json_atomic(os.path.join(workdir, 'results.json'), results)
  markdown = results_markdown(results)
  checkpointing.write_text_atomic(os.path.join(workdir, 'results.md'),
                                  f'{SMOKE_NOTE}\n\n{markdown}' if smoke else markdown)


def results_markdown(results: dict) -> str:
  """The results as Markdown: methods x main metrics, then the classifier's accuracies."""
  methods = [m for m in results if m not in ('classifier', 'note') and 'iou@0.5' in results[m]]
  lines = [results['note'], ''] if 'note' in results else []
  lines += ['| method | ' + ' | '.join(TABLE_METRICS) + ' |',
            '|---|' + '---:|' * len(TABLE_METRICS)] if methods else []
  for method in methods:
    cells = [_cell(results[method].get(metric)) for metric in TABLE_METRICS]
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  explainer = results.get('explainer', {})
  if 'specificity_own' in explainer:
    lines += ['', 'Class specificity of the explainer (probability of a present class keeping '
              'only its own mask / the mask of another present class, thresholds 0.1..0.9):',
              '', '| own | other | other / own | pairs |', '|---:|---:|---:|---:|',
              '| ' + ' | '.join(_cell(explainer[k]) for k in (
                  'specificity_own', 'specificity_other', 'specificity_other_over_own')) +
              f" | {int(explainer['specificity_pairs'])} |"]
  if 'specificity_runner_up' in explainer:
    lines += ['', 'Single-label data (no image has two present classes): probability of the '
              "true class keeping only its own mask / the mask of the classifier's runner-up "
              'class (the most probable absent class), thresholds 0.1..0.9:', '',
              '| own | runner-up | runner-up / own | images |', '|---:|---:|---:|---:|',
              '| ' + ' | '.join(_cell(explainer[k]) for k in (
                  'specificity_own', 'specificity_runner_up', 'specificity_runner_up_over_own')) +
              f" | {int(explainer['specificity_runner_up_images'])} |"]
  undefined = undefined_fields(results)
  if undefined:
    lines += ['', 'Undefined (null in results.json, - in the tables): ' + '; '.join(
        f"{field} ({UNDEFINED_REASONS.get(field.rsplit('.', 1)[-1], 'nothing to average')})"
        for field in undefined) + '.']
  if 'classifier' in results:
    lines += ['', '| classifier | value |', '|---|---:|']
    lines += [f'| {k} | {_cell(v)} |' for k, v in sorted(results['classifier'].items())]
  return '\n'.join(lines) + '\n'


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, int):
    return str(value)
  return f'{value:.3f}'
