r"""What do the paper's loss terms say about the *true* masks on this data? A diagnostic.

  python experiments/silhouette_leak.py --config=configs/synthetic.py

Scores masks made from the ground truth of the test split, no explainer involved: the union of
the image's objects, then that union dilated by 1, 2, ... pixels (a square structuring element)
and the union's bounding box. For each it prints the merged-mask iou@0.5 against the objects
(what the evaluation rewards) next to what the frozen classifier makes of the images the mask
keeps and drops: the per-class accuracy on each, and the two loss terms of the paper that read
them, the classification loss of the kept image and the entropy loss of the dropped image
(`wysiwyc.losses`; lower is better for the Explainer).

What it tells: the Explainer minimizes those loss terms, not the IoU. If the dropped image of
the exact object masks is still classified (its black hole has the object's outline, and on this
data the outline is the class), the entropy term prefers masks wider than the objects, and the
paper's loss and the IoU against exact masks pull apart.
"""

import tempfile

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import data_parallel
from wysiwyc import losses
from wysiwyc import stages
from wysiwyc import train_steps
from wysiwyc.data import augment
from wysiwyc.data import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Experiment config.',
                                lock_config=False)
flags.DEFINE_list('dilations', ['0', '1', '2', '3', '4', '6'], 'Dilation radii in pixels.')
flags.DEFINE_integer('eval_examples', 500, 'Test images scored.')


def bounding_boxes(masks: np.ndarray) -> np.ndarray:
  """(B,H,W) filled bounding box of each mask's foreground."""
  boxes = np.zeros_like(masks)
  for box, mask in zip(boxes, masks):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows):
      box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
  return boxes


def mask_scores(classify, images, foreground, labels, masks, multilabel: bool) -> dict:
  """Per-batch sums of iou@0.5, kept/dropped accuracy and the paper's two classifier terms."""
  keep = masks[..., None]
  kept, dropped = jnp.split(classify(jnp.concatenate([keep * images, (1 - keep) * images])), 2)
  inter = jnp.sum((masks > 0.5) & (foreground > 0.5), axis=(1, 2))
  union = jnp.sum((masks > 0.5) | (foreground > 0.5), axis=(1, 2))
  accuracy = lambda logits: train_steps.per_class_accuracy(logits, labels, multilabel)
  return {'iou@0.5': jnp.sum(inter / jnp.maximum(union, 1)),
          'accuracy_kept': jnp.sum(accuracy(kept)),
          'accuracy_dropped': jnp.sum(accuracy(dropped)),
          'classification_loss': losses.classification_loss(kept, labels, multilabel)
                                 * images.shape[0],
          'entropy_loss': losses.entropy_loss(dropped) * images.shape[0]}


def main(argv):
  del argv
  config = FLAGS.config
  spec = pipeline.prepare(config.data)
  mesh = data_parallel.create_mesh()
  with tempfile.TemporaryDirectory() as workdir:  # the stage writes classifier/best there
    classifier, variables = stages.classifier_stage(config, spec, workdir, mesh,
                                                    jax.random.key(config.seed))
  classify = lambda images: classifier.apply(variables, images, train=False)
  score = jax.jit(lambda images, fg, labels, masks: mask_scores(
      classify, images, fg, labels, masks, spec.multilabel))
  variants = [f'dilated {r} px' for r in FLAGS.dilations] + ['bounding box']
  totals = {name: {} for name in variants}
  scored = 0
  for batch in pipeline.as_numpy(pipeline.make_dataset(config.data, 'test', 50, training=False,
                                                        seed=0)):
    keep = batch['valid'].astype(bool)
    keep &= np.cumsum(keep) <= FLAGS.eval_examples - scored
    if not keep.any():
      break
    scored += int(keep.sum())
    images, fg, labels = (jnp.asarray(batch[k][keep]) for k in ('image', 'foreground', 'labels'))
    fg = fg.astype(jnp.float32)
    candidates = [augment.dilate(fg, int(r)) for r in FLAGS.dilations]
    candidates.append(jnp.asarray(bounding_boxes(np.asarray(fg))))
    for name, masks in zip(variants, candidates):
      for key, value in score(images, fg, labels, masks).items():
        totals[name][key] = totals[name].get(key, 0.0) + float(value)
  keys = list(next(iter(totals.values())))
  source = config.classifier.checkpoint or 'trained from scratch'
  print(f'ground-truth masks on {scored} test images (classifier: {source})')
  print('| mask | ' + ' | '.join(keys) + ' |')
  print('|---|' + '---:|' * len(keys))
  for name in variants:
    print(f'| {name} | ' + ' | '.join(f'{totals[name][k] / scored:.3f}' for k in keys) + ' |')


if __name__ == '__main__':
  app.run(main)
