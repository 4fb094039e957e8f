r"""The paper's PASCAL VOC 2007 set-up: VGG-16 (ImageNet backbone, frozen) fine-tuned on VOC,
the DeepLabV3-ResNet50 Explainer trained against it, evaluated on the 210 segmented test images.

  python -m wysiwyc.main --config=configs/voc.py --workdir=workdirs/voc_vgg16

Needs (docs/real_data.md): VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar in
<data_dir>/downloads/manual (or --config.data.manual_dir=DIR), or network; and
vgg16_weights.h5 and resnet50_weights.h5 (flaxmodels' ImageNet files) in
<weights_dir>/flaxmodels/ (--config.weights_dir=DIR). Without them the run stops at once with a
message naming what is missing. Expected result: the paper's VOC/VGG-16 numbers (its Table 1);
not reproduced yet (the development machines have neither the data nor the weights).

Variants (comma-separated after the file name, `smoke` last):
  resnet50  ResNet-50 classifier with the authors' loss weights for it (lambda_e=3,
            lambda_ac=0.8, lambda_t=0.01, explainer lr 1e-4)
  augment   random flips and colour jitter while training
  smoke     tiny, weight-free run for a first look at prepared data
"""

from wysiwyc import paper_setup


def get_config(arg: str = ''):
  config = paper_setup.base_config('voc2007', 'vgg16')
  paper_setup.use_paper_setting(config, 'voc', 'vgg16')
  return paper_setup.apply_variants(config, arg, VARIANTS)


VARIANTS = {
    'resnet50': lambda config: paper_setup.use_paper_setting(config, 'voc', 'resnet50'),
    'augment': paper_setup.apply_augment,
    'smoke': paper_setup.apply_smoke,
}
