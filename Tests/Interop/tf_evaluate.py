"""Top-1 of a checkpoint on TF-slim TFRecords computed by TensorFlow alone: weights read with
tf.train.load_checkpoint (moving-average shadows when present, as TF-slim's eval restores them),
TensorFlow's ops for the network, TensorFlow's JPEG decoder and eval preprocessing (central fraction
1.0). The reference our `evaluate` is compared with (docs/checkpoint-format.md):

    python Tests/Interop/tf_evaluate.py CHECKPOINT_PREFIX DATASET_DIR [SPLIT] [IMAGE_SIZE]
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnv2_tf  # noqa: E402


def main(prefix, data, split="validation", size=32):
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    model, classes = mnv2_tf.infer_model(shapes)
    ema = any(n.endswith("/ExponentialMovingAverage") for n in shapes)
    pick = lambda n: n + "/ExponentialMovingAverage" if ema and n + "/ExponentialMovingAverage" in shapes else n
    weights = {n: tf.constant(reader.get_tensor(pick(n))) for n in mnv2_tf.variable_shapes(model, classes)}
    images, labels = mnv2_tf.eval_images(os.path.join(data, split + "-*"), size)
    top1 = mnv2_tf.top1(lambda x: mnv2_tf.logits(x, weights.__getitem__, model, classes), images, labels)
    print("tensorflow %s: %s, %d classes, top1=%.4f images=%d (%s weights)"
          % (prefix, model, classes, top1, len(labels), "moving-average" if ema else "raw"))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], *(sys.argv[3:4]), *(int(a) for a in sys.argv[4:5]))
