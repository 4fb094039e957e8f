"""Pieces of the evaluation stage that the end-to-end tests in test_train.py do not isolate."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from wysiwyc import evaluation
from wysiwyc import metrics


def region_classifier(images):
  """Class c's logit is high iff the image is non-zero in column band c (3 classes)."""
  bands = jnp.stack([jnp.abs(images[:, :, 4 * c:4 * c + 4]).sum(axis=(1, 2, 3))
                     for c in range(3)], -1)
  return 10.0 * (bands > 0) - 5.0


def test_specificity_sums_agree_with_the_metric_summary():
  key = jax.random.key(0)
  images = jax.random.normal(key, (5, 12, 12, 3))
  masks = jax.random.uniform(jax.random.fold_in(key, 1), (5, 12, 12, 3))
  labels = jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1], [0, 0, 0]], jnp.float32)
  sums = evaluation.specificity_sums(region_classifier, images, masks, labels, True)
  summary = evaluation.specificity_summary({k: float(v.sum()) for k, v in sums.items()})
  expected = metrics.class_specificity_summary(
      metrics.class_specificity(lambda x: jax.nn.sigmoid(region_classifier(x)), images, masks),
      labels)
  np.testing.assert_allclose(summary['specificity_own'], expected['own'], rtol=1e-6)
  np.testing.assert_allclose(summary['specificity_other'], expected['other'], rtol=1e-6)
  assert summary['specificity_pairs'] == expected['num_other_pairs'] == 2 + 6 + 2


def test_class_specific_masks_score_low_other_over_own():
  """Masks that each cover only their class's band keep the true class with its own mask and
  lose it with another's; masks covering every band are not specific."""
  images = jnp.ones((1, 12, 12, 3))
  labels = jnp.ones((1, 3))
  specific = jnp.zeros((1, 12, 12, 3))
  for c in range(3):
    specific = specific.at[0, :, 4 * c:4 * c + 4, c].set(1.0)
  summarize = lambda masks: evaluation.specificity_summary(
      {k: float(v.sum()) for k, v in
       evaluation.specificity_sums(region_classifier, images, masks, labels, True).items()})
  good, blob = summarize(specific), summarize(jnp.ones((1, 12, 12, 3)))
  assert good['specificity_own'] > 0.99 and good['specificity_other'] < 0.01
  assert good['specificity_other_over_own'] < 0.01
  assert blob['specificity_other_over_own'] > 0.99


def test_single_label_specificity_keeps_the_runner_up_class_mask():
  """One class an image: 'other' has no pair (None, not NaN); the runner-up class's mask keeps
  the true class for masks that cover every band, not for masks specific to their class."""
  images = jnp.ones((2, 12, 12, 3))
  labels = jnp.asarray([[1, 0, 0], [0, 0, 1]], jnp.float32)
  specific = jnp.zeros((2, 12, 12, 3))
  for c in range(3):
    specific = specific.at[:, :, 4 * c:4 * c + 4, c].set(1.0)
  summarize = lambda masks: evaluation.specificity_summary(
      {k: float(v.sum()) for k, v in
       evaluation.specificity_sums(region_classifier, images, masks, labels, False).items()})
  good, blob = summarize(specific), summarize(jnp.ones((2, 12, 12, 3)))
  assert good['specificity_other'] is None and good['specificity_other_over_own'] is None
  assert good['specificity_runner_up_images'] == 2
  assert good['specificity_own'] > 0.4 and good['specificity_runner_up_over_own'] < 0.05
  assert blob['specificity_runner_up_over_own'] > 0.99
  # Multi-label runs keep their keys (no runner-up).
  assert 'specificity_runner_up_sum' not in evaluation.specificity_sums(
      region_classifier, images, specific, labels, True)


def test_results_hold_null_not_nan_and_results_md_says_why():
  summary = evaluation.specificity_summary({
      'specificity_own_sum': 3.0, 'specificity_own_count': 6.0, 'specificity_other_sum': 0.0,
      'specificity_other_count': 0.0})
  summary['specificity_other'] = float('nan')  # as a mean over nothing would be
  results = evaluation.without_nan({'explainer': summary,
                                    'classifier': {'accuracy_plain': 1.0}})
  assert results['explainer']['specificity_other'] is None
  assert evaluation.undefined_fields(results) == ['explainer.specificity_other',
                                                  'explainer.specificity_other_over_own']
  markdown = evaluation.results_markdown(results)
  assert '| 0.500 | - | - | 0 |' in markdown
  assert 'explainer.specificity_other (no test image has two present classes' in markdown
  assert 'NaN' not in json.dumps(results) and 'nan' not in markdown
