r"""Can the config's explainer network express class-specific masks at all? A diagnostic.

  python experiments/oracle_explainer.py --config=configs/synthetic.py --steps=1500

Trains the config's explainer architecture with *direct* supervision, per-pixel binary
cross-entropy plus a soft Dice term against the ground-truth per-class object masks of the
synthetic data set (no classifier, none of the paper's losses), for `--steps` steps with the
config's optimizer, then scores it on the test split like the main job: merged-mask iou@0.5
(the mask of the image's classes, max-merged, vs the union of the objects) and mean per-class
iou@0.5 (each present class's mask vs that class's objects). Class specificity is reported as
the mean over pairs of different present classes (c, d) of the fraction of class d's object
pixels that c's mask covers (0 = perfectly class-specific; 1 = one shared objectness map).

What it tells: if this oracle reaches high per-class IoU in the Explainer's step budget, the
architecture can express class-specific masks and any shortfall of the Explainer comes from the
training signal of its loss; if not, from the network.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import model_setup
from wysiwyc import train_steps
from wysiwyc.data import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Experiment config.',
                                lock_config=False)
flags.DEFINE_integer('steps', 400, 'Training steps.')
flags.DEFINE_integer('eval_examples', 500, 'Test images scored.')
flags.DEFINE_float('dice_weight', 1.0, 'Weight of a soft Dice term over the present classes '
                   'next to the per-pixel cross-entropy (objects cover ~5% of the pixels, so '
                   'cross-entropy alone keeps the masks below 0.5 for long).')


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
  union = np.logical_or(pred, truth).sum()
  return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def score(masks: np.ndarray, class_masks: np.ndarray, labels: np.ndarray) -> dict:
  """Merged and per-class iou@0.5 and cross-class coverage of one batch (lists of values)."""
  merged, per_class, cross = [], [], []
  for mask, truth, label in zip(masks, class_masks > 0.5, labels > 0.5):
    present = np.flatnonzero(label)
    if not len(present):
      continue
    merged.append(iou(mask[..., present].max(-1) > 0.5, truth[..., present].any(-1)))
    per_class += [iou(mask[..., c] > 0.5, truth[..., c]) for c in present]
    cross += [float((mask[..., c][truth[..., d]] > 0.5).mean())
              for c in present for d in present if c != d and truth[..., d].any()]
  return {'iou@0.5': merged, 'per_class_iou@0.5': per_class, 'cross_class_coverage': cross}


def soft_dice_loss(masks, class_masks):
  """1 - soft Dice, averaged over the (image, class) pairs whose class is present."""
  intersection = (masks * class_masks).sum(axis=(1, 2))
  sizes = masks.sum(axis=(1, 2)) + class_masks.sum(axis=(1, 2))
  present = (class_masks.sum(axis=(1, 2)) > 0).astype(jnp.float32)
  dice = 2 * intersection / jnp.maximum(sizes, 1e-6)
  return jnp.sum((1 - dice) * present) / jnp.maximum(present.sum(), 1.0)


def main(argv):
  del argv
  config = FLAGS.config
  spec = pipeline.prepare(config.data)
  model = model_setup.build_explainer(config, spec)
  train_steps.set_step_budget(config.explainer.train, FLAGS.steps)
  tx = train_steps.make_optimizer(config.explainer.train)
  state = train_steps.init_state(model, tx, jax.random.key(config.seed), config.data.image_size)

  @jax.jit
  def step(state, images, class_masks):
    def loss_fn(params):
      logits, batch_stats = train_steps.apply_model(model, params, state.batch_stats, images,
                                                    train=True)
      loss = (optax.sigmoid_binary_cross_entropy(logits, class_masks).mean()
              + FLAGS.dice_weight * soft_dice_loss(jax.nn.sigmoid(logits), class_masks))
      return loss, batch_stats
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state), loss

  predict = jax.jit(lambda state, images: jax.nn.sigmoid(
      train_steps.apply_model(model, state.params, state.batch_stats, images, train=False)[0]))

  start, done, epoch = time.time(), 0, 0
  while done < FLAGS.steps:
    batches = pipeline.as_numpy(pipeline.make_dataset(
        config.data, 'train', config.explainer.train.batch_size, training=True,
        seed=config.seed, epoch=epoch))
    for batch in batches:
      state, loss = step(state, jnp.asarray(batch['image']), jnp.asarray(batch['class_masks']))
      done += 1
      if done % 100 == 0 or done == FLAGS.steps:
        print(f'step {done}: loss {float(loss):.4f} ({time.time() - start:.0f} s)', flush=True)
      if done == FLAGS.steps:
        break
    epoch += 1

  totals = {'iou@0.5': [], 'per_class_iou@0.5': [], 'cross_class_coverage': []}
  scored = 0
  for batch in pipeline.as_numpy(pipeline.make_dataset(config.data, 'test', 50, training=False,
                                                        seed=0)):
    keep = batch['valid'].astype(bool)
    if FLAGS.eval_examples:
      keep &= np.cumsum(keep) <= FLAGS.eval_examples - scored
    scored += int(keep.sum())
    masks = np.asarray(predict(state, jnp.asarray(batch['image'])))
    for name, values in score(masks[keep], batch['class_masks'][keep],
                              batch['labels'][keep]).items():
      totals[name] += values
    if FLAGS.eval_examples and scored >= FLAGS.eval_examples:
      break
  print(f'oracle explainer after {FLAGS.steps} steps on {scored} test images: '
        + ', '.join(f'{k} {np.mean(v):.3f}' for k, v in totals.items()))


if __name__ == '__main__':
  app.run(main)
