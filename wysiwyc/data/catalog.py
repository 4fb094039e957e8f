"""Every data set `config.data.name` can name, looked up by name.

Importing this module imports every data set module, each of which registers its adapters with
`wysiwyc.data.registry`; the synthetic data set is registered here.
"""

from typing import Tuple

from wysiwyc import errors
from wysiwyc.data import arrays  # pylint: disable=unused-import
from wysiwyc.data import coco  # pylint: disable=unused-import
from wysiwyc.data import cub  # pylint: disable=unused-import
from wysiwyc.data import folder  # pylint: disable=unused-import
from wysiwyc.data import registry
from wysiwyc.data import synthetic
from wysiwyc.data import voc  # pylint: disable=unused-import

registry.register_dataset('synthetic', registry.DatasetAdapter(
    make_builder=synthetic.make_builder, class_names=synthetic.class_names,
    to_standard=synthetic.to_standard, multilabel=True))


def known_datasets() -> Tuple[str, ...]:
  return tuple(sorted(registry.registered()))


def get_adapter(name: str) -> registry.DatasetAdapter:
  adapters = registry.registered()
  if name not in adapters:
    raise errors.UserError(f'Unknown data set {name!r}; known data sets: '
                           f'{", ".join(known_datasets())}.')
  return adapters[name]
