r"""The paper's comparison: every attribution method on one trained workdir's classifier.

  python experiments/compare_methods.py --workdir=workdirs/synthetic --num_images=16

Cost on the 2-core CPU with the default flags and the synthetic config (64 px, SimpleCNN 32x4),
estimated from the parts measured under load (not from one full run): Extremal Perturbations
~9 min (100 SGD steps x 4 areas per (image, ground-truth class), plus its timing and sanity
runs), Real-Time Saliency training ~7 min (100 steps), RISE ~2.5 min, everything else ~5 min.
iGOS++ ~3 min (10 iterations of 10 integration steps per (image, ground-truth class), 2-4 s a
pair, measured on the shipped classifier; the paper's 15 x 20: ~10 s a pair).

Runs the Explainer of the workdir, a Real-Time Saliency explainer trained against the same
frozen classifier (`W/baselines/rts`, trained here on first use, or --rts_workdir), and every
baseline of `wysiwyc.attribution.METHODS` on the same test images, and writes to the workdir
(or --out):

  comparison.md        the table, the settings and whether the paper's findings hold here
  comparison_summary.md    the part of comparison.md that pages quote (experiments/fill_tables.py):
                       the table, how to read it and the findings
  comparison.csv       method x metric, plus seconds per image for all classes
  comparison.json      the same numbers, and the class-specificity matrices
  figures/comparison.png   images in rows, methods in columns: the masks of the image's
                       ground-truth classes merged by pixel-wise max (as the paper's Figure 2)

Metrics (means over images, or over (image, present class) pairs):
- The paper's protocol (`wysiwyc.evaluation.score_method`): merged masks of the ground-truth
  classes vs the union of the objects: iou@0.5, mean_f1, cont_f1, accuracy, auc, saliency,
  coverage; per_class_iou@0.5 compares the mask of each present class with its object.
- insertion / deletion AUC (RISE paper; insertion from a blurred image, deletion to zeros) and
  the pointing game, per (image, present class), with the class's own mask.
- Class specificity (the authors' notebook): probability of a present class keeping its own
  mask ('own') or the mask of another present class ('other'), thresholds 0.1..0.9. Lower
  'other' is more class-specific. Probabilities are the classifier's own (sigmoid for
  multi-label data; the notebook used a softmax).
- Model-randomization sanity check (Adebayo et al.): Spearman correlation between the maps of
  the trained and of a re-initialized classifier, per (image, present class), on the first
  --sanity_images images; lower is better. Not run for the amortized explainers (Explainer,
  Real-Time Saliency), whose masks do not query the classifier at test time: they would need
  retraining against the randomized classifier.
- seconds_per_image: one call on --timing_batch_size images with every class explained, after
  a call of the same shape compiled it (best of up to 3 calls while under a second), divided by
  the batch size.

The harness is `wysiwyc.compare`; this script is its command line. Add a method by adding
`wysiwyc.compare.METHOD_BUILDERS[name] = builder`, where `builder(context)` returns
`fn(images (B,H,W,3), labels (B,C), key) -> masks (B,H,W,C) in [0,1]`; `labels` are the
ground-truth classes (all ones when timing), which a method may use to skip absent classes.
Methods that query the classifier also take `variables=` (the sanity check passes the
randomized classifier's); add amortized ones to `AMORTIZED`.
"""

import os
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from wysiwyc import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
from wysiwyc import compare as harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
harness.define_option_flags()  # --workdir, --out and one flag per option of harness.compare

# The flags that are options of `harness.compare()` (the rest: --workdir, --out).
OPTION_FLAGS = tuple(harness.DEFAULT_OPTIONS)


def main(argv):
  del argv
  if not FLAGS.workdir:
    print('usage: python experiments/compare_methods.py --workdir=W [--num_images=N]',
          file=sys.stderr)
    sys.exit(2)
  try:
    harness.compare(FLAGS.workdir, FLAGS.out, **{name: FLAGS[name].value for name in OPTION_FLAGS})
  except errors.UserError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  out = os.path.abspath(FLAGS.out or FLAGS.workdir)
  with open(os.path.join(out, 'comparison.md')) as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main)
