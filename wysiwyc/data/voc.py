"""PASCAL VOC 2007 for the pipeline: data sets 'voc2007' and 'voc2007_segmentation'.

'voc2007' (the paper's VOC set-up): 20 classes, multi-hot targets from every annotated object.
  train       TFDS voc/2007 'train'        2501 images (labels only)
  validation  TFDS voc/2007 'validation'   2510 images (labels only; early stopping)
  test        voc2007_segmentation 'test'   210 images with segmentations (the evaluation)
'voc2007_segmentation': the segmented images alone (train 209 / validation 213 / test 210).

Ground truth for the evaluation (as the authors' evaluation script): class c's mask is the
pixels of index c+1; the foreground (merged mask) is every non-background pixel, the 255 'void'
border included (the authors binarized the PNG with `> 0`).

Both are made from VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar, taken from the manual
folder or downloaded by TFDS.
"""

from __future__ import annotations

from typing import Dict, List

import tensorflow as tf
import tensorflow_datasets as tfds

from wysiwyc.data import registry
from wysiwyc.data import sources
from wysiwyc.data import voc_segmentation

VOC_CLASSES = voc_segmentation.VOC_CLASSES


def missing(data_config) -> List[str]:
  problem = sources.missing_archives_message(
      'PASCAL VOC 2007', data_config, voc_segmentation.ARCHIVES,
      prepared_name='voc/2007/5.0.0 and voc2007_segmentation/1.0.0')
  return [problem] if problem else []


def make_voc2007_builder(data_config) -> tfds.core.DatasetBuilder:
  return tfds.builder('voc/2007', data_dir=data_config.get('data_dir', None))


def make_segmentation_builder(data_config) -> tfds.core.DatasetBuilder:
  return voc_segmentation.Voc2007Segmentation(data_dir=data_config.get('data_dir', None))


def class_names(builder) -> tuple:
  del builder
  return VOC_CLASSES


def voc2007_to_standard(example: Dict[str, tf.Tensor], num_classes: int) -> Dict[str, tf.Tensor]:
  """TFDS voc/2007 example -> image and multi-hot labels (no masks)."""
  return {'image': example['image'], 'labels': sources.multi_hot(example['labels'], num_classes)}


def segmentation_to_standard(example: Dict[str, tf.Tensor],
                             num_classes: int) -> Dict[str, tf.Tensor]:
  """voc2007_segmentation example -> image, labels, per-class masks and the foreground."""
  indices = tf.cast(example['segmentation'][..., 0], tf.int32)
  class_masks = tf.cast(indices[..., None] == tf.range(1, num_classes + 1), tf.uint8)
  foreground = tf.cast(indices > 0, tf.uint8)  # the void border (255) counts as object
  return {'image': example['image'], 'labels': sources.multi_hot(example['labels'], num_classes),
          'class_masks': class_masks, 'foreground': foreground}


def voc2007_splits(data_config) -> Dict[str, registry.SplitSource]:
  del data_config
  return {'train': registry.SplitSource('train'),
          'validation': registry.SplitSource('validation'),
          'test': registry.SplitSource('test', dataset='voc2007_segmentation')}


registry.register_dataset('voc2007', registry.DatasetAdapter(
    make_builder=make_voc2007_builder, class_names=class_names,
    to_standard=voc2007_to_standard, multilabel=True, splits=voc2007_splits, missing=missing,
    download_config=sources.download_config))
registry.register_dataset('voc2007_segmentation', registry.DatasetAdapter(
    make_builder=make_segmentation_builder, class_names=class_names,
    to_standard=segmentation_to_standard, multilabel=True, missing=missing,
    download_config=sources.download_config))
