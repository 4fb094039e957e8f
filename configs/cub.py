r"""Caltech-UCSD Birds 200-2011: VGG-16 (ImageNet backbone, frozen) fine-tuned on CUB with
softmax cross-entropy (one label per image), the DeepLabV3-ResNet50 Explainer trained against
it (softmax cross-entropy on the kept image; the authors published no CUB config, so the loss
weights are their defaults, VOC's), evaluated on the test split against the bird segmentations.

  python -m wysiwyc.main --config=configs/cub.py --workdir=workdirs/cub_vgg16

Needs (docs/real_data.md): CUB_200_2011.tgz and segmentations.tgz in
<data_dir>/downloads/manual (or --config.data.manual_dir=DIR), or network, and OpenCV
(opencv-python-headless) to prepare them; vgg16_weights.h5 and resnet50_weights.h5 in
<weights_dir>/flaxmodels/ (--config.weights_dir=DIR). Without them the run stops at once with a
message naming what is missing.

Variants (comma-separated, `smoke` last): resnet50, augment, smoke.
"""

from wysiwyc import paper_setup


def get_config(arg: str = ''):
  config = paper_setup.base_config('cub2011', 'vgg16')
  return paper_setup.apply_variants(config, arg, VARIANTS)


VARIANTS = {
    'resnet50': lambda config: paper_setup.set_classifier(config, 'resnet50'),
    'augment': paper_setup.apply_augment,
    'smoke': paper_setup.apply_smoke,
}
