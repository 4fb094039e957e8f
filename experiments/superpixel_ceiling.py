r"""How well can LIME's superpixels outline the objects at all? A diagnostic of the data.

  python experiments/superpixel_ceiling.py --config=configs/synthetic.py
  python experiments/superpixel_ceiling.py --config=configs/synthetic.py:natural

LIME explains with SLIC superpixels (`wysiwyc.attribution.lime.slic_segments`, the settings of
`experiments/compare_methods.py`): its mask is a union of them. This script takes, on each test
image, the union of the superpixels more than half covered by objects (the best such union, up
to the pixels a superpixel shares with both) and prints its mean iou with the objects' union: the
iou a perfect LIME would reach. Near 1, the superpixels follow the outlines and LIME gets them for
free; the Explainer's masks have no such ceiling.
"""

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc.attribution import common
from wysiwyc.attribution import lime
from wysiwyc.data import synthetic

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'A synthetic-data config.')
flags.DEFINE_integer('num_images', 100, 'Test images (the first ones).')
flags.DEFINE_integer('num_segments', 50, 'SLIC superpixels (compare_methods --lime_segments).')


def main(argv):
  del argv
  params = synthetic.SyntheticParams.from_config(FLAGS.config.data.synthetic)
  examples = [synthetic.generate_example(params, 'test', i) for i in range(FLAGS.num_images)]
  images = np.stack([example['image'] for example in examples]) / 255.0
  normalized = (images - np.asarray(common.IMAGENET_MEAN)) / np.asarray(common.IMAGENET_STD)
  segments = lime.slic_segments(normalized, FLAGS.num_segments)
  ious = [lime.superpixel_union_iou(s, example['segmentation'] > 0)
          for s, example in zip(segments, examples)]
  print(f'data set {params.config_name()}, {len(ious)} test images, {FLAGS.num_segments} SLIC '
        f'superpixels: iou of the best superpixel union {np.mean(ious):.3f} '
        f'(median {np.median(ious):.3f})')


if __name__ == '__main__':
  app.run(main)
