r"""Writes the synthetic shapes data set as a folder in the manifest layout (docs/own_data.md).

  python experiments/synthetic_to_folder.py --out=/tmp/shapes_folder --num_train=3000

DIR/classes.txt, DIR/{train,validation,test}.csv (image,labels,mask), DIR/images/*.png and
DIR/masks/*.png (pixel = class index + 1, 0 = background): a stand-in for a user's own labelled
images with masks, to time and check `configs/folder.py` on data of known content. Any field of
the synthetic data set's parameters can be set, e.g. --object_texture=1.0 for another look.
"""

import csv
import os

from absl import app
from absl import flags
import numpy as np
import PIL.Image

from wysiwyc import runtime  # pylint: disable=g-bad-import-order
runtime.quiet_logs()  # Before TensorFlow loads; --verbosity=1 keeps its logs.

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from wysiwyc.data import synthetic  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Folder to write (must not exist yet).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory of the synthetic data set.')
flags.DEFINE_integer('num_train', 3000, 'Training images.')
flags.DEFINE_integer('num_validation', 300, 'Validation images (0: none, cut from train).')
flags.DEFINE_integer('num_test', 300, 'Test images (0: no test split).')
flags.DEFINE_float('object_texture', 0.0, "The synthetic data set's object_texture.")
flags.mark_flags_as_required(['out'])


def main(argv):
  del argv
  params = synthetic.default_synthetic_config()
  params.num_train = FLAGS.num_train
  params.num_validation = max(FLAGS.num_validation, 1)
  params.num_test = max(FLAGS.num_test, 1)
  params.object_texture = FLAGS.object_texture
  data_config = synthetic.default_data_config()
  data_config.synthetic = params
  data_config.data_dir = FLAGS.data_dir
  builder = synthetic.make_builder(data_config)
  builder.download_and_prepare()
  names = synthetic.class_names(builder)
  os.makedirs(os.path.join(FLAGS.out, 'images'))
  os.makedirs(os.path.join(FLAGS.out, 'masks'))
  with open(os.path.join(FLAGS.out, 'classes.txt'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  counts = {'train': FLAGS.num_train, 'validation': FLAGS.num_validation,
            'test': FLAGS.num_test}
  for split, count in counts.items():
    if not count:
      continue
    with open(os.path.join(FLAGS.out, f'{split}.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['image', 'labels', 'mask'])
      dataset = builder.as_dataset(split=split, shuffle_files=False).take(count)
      for i, example in enumerate(tfds.as_numpy(dataset)):
        image, mask = f'images/{split}_{i:05d}.png', f'masks/{split}_{i:05d}.png'
        PIL.Image.fromarray(example['image']).save(os.path.join(FLAGS.out, image))
        PIL.Image.fromarray(example['segmentation'][..., 0]).save(os.path.join(FLAGS.out, mask))
        labels = '|'.join(names[c] for c in np.flatnonzero(example['labels']))
        writer.writerow([image, labels, mask])
  print(f'Wrote {sum(counts.values())} images of {len(names)} classes to {FLAGS.out}.')


if __name__ == '__main__':
  app.run(main)
