"""Convert a saved Keras model to ONNX: ``python -m inference.onnx_convert MODEL.keras OUT.onnx``.

Run as a child process by ``inference.onnx_runtime.convert``: tf2onnx holds about 12 GB at its peak
while it converts the seed's InceptionResNetV2, and a long-lived worker would keep that memory.
Float32 throughout; the batch dimension stays free.
"""

from __future__ import annotations

import sys
from pathlib import Path

OPSET = 17


def convert_file(*, source: Path, target: Path) -> None:
    """Load ``source`` (a .keras file) under the float32 policy and write its ONNX form to ``target``."""
    import keras
    import tensorflow as tf
    import tf2onnx

    # Registers the layers the Keras 2 loader puts in place of Lambdas, which the .keras file names.
    import inference.keras2_legacy  # noqa: F401

    keras.config.set_dtype_policy("float32")
    model = keras.saving.load_model(source, compile=False)
    signature = (tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="input"),)
    function = tf.function(lambda batch: model(batch, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    target.write_bytes(proto.SerializeToString())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m inference.onnx_convert MODEL.keras OUT.onnx\n")
        return 2
    convert_file(source=Path(argv[0]), target=Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
