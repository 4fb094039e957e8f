"""Attribution baselines in JAX: every class and every image of a batch at once.

    from wysiwyc import attribution
    classifier = attribution.Classifier(module, multilabel=True)   # a Flax classifier
    maps = attribution.METHODS['rise'](classifier, variables, images, key=jax.random.key(0))
    # images float32 (B,H,W,3), ImageNet-normalized ((x/255 - mean)/std, as the pipelines give
    # them; uint8 is refused) -> maps (B,H,W,C) in [0,1], one per class

Every entry of `METHODS` is `method(classifier, variables, images, *, key=None, chunk_size=...,
normalize=True, **hyperparameters) -> (B,H,W,C)`; see `common` for the conventions (min-max
rescaling per (image, class), chunked evaluation bounding memory, per-item random keys).
Add a method by adding a callable with that signature to `METHODS`.
"""

from typing import Callable, Dict

from wysiwyc.attribution import common
from wysiwyc.attribution import extremal
from wysiwyc.attribution import grad_cam
from wysiwyc.attribution import gradients
from wysiwyc.attribution import igos
from wysiwyc.attribution import lime
from wysiwyc.attribution import occlusion
from wysiwyc.attribution import rise
from wysiwyc.attribution.common import Classifier, normalize_maps

METHODS: Dict[str, Callable] = {
    'grad_cam': grad_cam.grad_cam,
    'grad_cam_plus_plus': grad_cam.grad_cam_plus_plus,
    'rise': rise.rise,
    'extremal_perturbation': extremal.extremal_perturbation,
    'igos_plus_plus': igos.igos_plus_plus,
    'occlusion': occlusion.occlusion,
    'lime': lime.lime,
    'gradients': gradients.gradients,
    'integrated_gradients': gradients.integrated_gradients,
    'smoothgrad': gradients.smoothgrad,
    'guided_backprop': gradients.guided_backprop,
}

# Methods that run the classifier many times per image (perturbation-based).
PERTURBATION_METHODS = ('rise', 'extremal_perturbation', 'igos_plus_plus', 'occlusion', 'lime')
