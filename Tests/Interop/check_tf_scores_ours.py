"""TensorFlow's own ops (tf.nn conv/depthwise SAME, fused batch norm, ReLU6) on the weights TF reads
from our TF checkpoint — the moving-average shadows, as TF-slim's eval restores them — score the
interop split as our `evaluate` does on the same checkpoint: top-1 within 0.1 points."""
import os
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

import mnv2_tf  # noqa: E402
from interop_common import TRAIN, newest_step, our_top1, report, tf_images  # noqa: E402

TOLERANCE = 0.001  # 0.1 points

prefix = os.path.join(TRAIN, "model.ckpt-%d" % newest_step())
reader = tf.train.load_checkpoint(prefix)
shapes = reader.get_variable_to_shape_map()
model, classes = mnv2_tf.infer_model(shapes)
ema = any(n.endswith("/ExponentialMovingAverage") for n in shapes)


def get(name):
    shadow = name + "/ExponentialMovingAverage"
    return reader.get_tensor(shadow if ema and shadow in shapes else name)


weights = {n: tf.constant(get(n)) for n in mnv2_tf.variable_shapes(model, classes)}
images, labels = tf_images()
theirs = mnv2_tf.top1(lambda x: mnv2_tf.logits(x, weights.__getitem__, model, classes), images, labels)
ours, n = our_top1(prefix)
ok = n == len(labels) and abs(theirs - ours) <= TOLERANCE
report("check_tf_scores_ours", ok, "%s on %d images: TensorFlow top-1 %.4f, ours %.4f (%s weights)"
       % (os.path.basename(prefix), n, theirs, ours, "moving-average" if ema else "raw"))
