"""onnxruntime runs our `export --format onnx` of the train directory's checkpoint: the model passes
onnx.checker, takes NHWC [N, size, size, 3], its probabilities sum to 1, and its top-1 on the interop
split (images decoded by TensorFlow) equals our `evaluate` within 0.1 points."""
import os
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import mnv2_tf  # noqa: E402
from interop_common import INTEROP_DIR, IMAGE_SIZE, TRAIN, our_top1, report, run, tf_images  # noqa: E402

TOLERANCE = 0.001  # 0.1 points

out = os.path.join(INTEROP_DIR, "model.onnx")
run(["export", "--checkpoint-path", TRAIN, "--format", "onnx", "--output", out])
onnx.checker.check_model(onnx.load(out))
sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
images, labels = tf_images()
theirs = mnv2_tf.top1(lambda x: sess.run(["logits"], {inp.name: x})[0], images, labels)
probs = sess.run(["probabilities"], {inp.name: images[:8]})[0]
ours, n = our_top1(TRAIN)
problems = []
if inp.shape[1:] != [IMAGE_SIZE, IMAGE_SIZE, 3]:
    problems.append("input shape %s" % inp.shape)
if not np.allclose(probs.sum(1), 1, atol=1e-5):
    problems.append("probabilities do not sum to 1")
if n != len(labels) or abs(theirs - ours) > TOLERANCE:
    problems.append("top-1 differs")
report("check_onnx_scores_ours", not problems, "%s on %d images: onnxruntime top-1 %.4f, ours %.4f%s"
       % (os.path.basename(out), n, theirs, ours, "" if not problems else " (" + "; ".join(problems) + ")"))
