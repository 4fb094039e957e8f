r"""Writes a SimpleCNN classifier of the project as an ONNX file (wysiwyc/onnx_export.py): NCHW
input `input` (batch,3,S,S), ImageNet-normalized, output `logits`, opset 17, as torch.onnx.export
writes a PyTorch classifier. The Explainer trained against the file (--config.classifier.onnx)
is compared with the one trained against the same classifier in Flax (docs/pytorch.md).

  python experiments/export_onnx.py --classifier=zoo:synthetic_shapes_cnn \
      --out=workdirs/onnx/synthetic_shapes_cnn.onnx

--classifier is 'zoo:NAME' or a trained workdir whose classifier is a SimpleCNN. Prints what it
wrote as JSON, with the largest difference between the file's logits (run by wysiwyc's ONNX
import) and the Flax module's on 8 random images.
"""

import json
import sys

from absl import app
from absl import flags

from wysiwyc import runtime
runtime.quiet_logs()  # Before the imports below load TensorFlow; --verbosity=1 keeps its logs.
# pylint: disable=g-import-not-at-top,wrong-import-position
from wysiwyc import errors
from wysiwyc import onnx_export

FLAGS = flags.FLAGS
flags.DEFINE_string('classifier', 'zoo:synthetic_shapes_cnn', "'zoo:NAME' or a workdir.")
flags.DEFINE_string('out', None, 'The .onnx file to write.')
flags.mark_flag_as_required('out')


def main(argv):
  del argv
  try:
    print(json.dumps(onnx_export.export(FLAGS.classifier, FLAGS.out), indent=2))
  except errors.UserError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
