r"""The paper's MS COCO 2014 set-up: ResNet-50 (ImageNet backbone, frozen) fine-tuned on COCO
train2014 (5000 images held out for validation), the DeepLabV3-ResNet50 Explainer trained
against it with the COCO loss weights (lambda_e=3, lambda_tv=0.05, lambda_ac=0.1,
lambda_t=0.01, lambda_nt=0.03, patience 2), evaluated on 1000 annotated val2014 images with
masks rasterized from the instance annotations.

  python -m wysiwyc.main --config=configs/coco.py --workdir=workdirs/coco_resnet50

Needs (docs/real_data.md): the seven archives TFDS's coco/2014 is made from (train2014,
val2014, test2014, test2015 zips and three annotation zips, ~40 GB) in
<data_dir>/downloads/manual (or --config.data.manual_dir=DIR), or network; and
resnet50_weights.h5 in <weights_dir>/flaxmodels/ (--config.weights_dir=DIR). Without them the
run stops at once with a message naming what is missing.

Variants (comma-separated, `smoke` last): vgg16 (VGG-16 classifier with the authors' COCO/VGG
weights: lambda_tv=0.3, lambda_ac=0.3, lambda_t=0.03, lambda_nt=0.1), augment, smoke.
"""

from wysiwyc import paper_setup


def get_config(arg: str = ''):
  config = paper_setup.base_config('coco2014', 'resnet50')
  paper_setup.use_paper_setting(config, 'coco', 'resnet50')
  return paper_setup.apply_variants(config, arg, VARIANTS)


VARIANTS = {
    'vgg16': lambda config: paper_setup.use_paper_setting(config, 'coco', 'vgg16'),
    'augment': paper_setup.apply_augment,
    'smoke': paper_setup.apply_smoke,
}
