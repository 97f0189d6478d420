"""TensorFlow reads our `--checkpoint-format tf` output: tf.train.latest_checkpoint finds it through
the `checkpoint` state file, and tf.train.load_checkpoint gives every tensor of the safetensors file
of the same step (written by the same save) with the same name, shape, dtype and bytes."""
import os
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from interop_common import TRAIN, newest_step, report  # noqa: E402

step = newest_step()
prefix = os.path.join(TRAIN, "model.ckpt-%d" % step)
latest = tf.train.latest_checkpoint(TRAIN)
reader = tf.train.load_checkpoint(prefix)
theirs = reader.get_variable_to_shape_map()
ours = load_file(prefix + ".safetensors")
problems = []
if os.path.abspath(latest or "") != os.path.abspath(prefix):
    problems.append("latest_checkpoint is %s, expected %s" % (latest, prefix))
if set(theirs) != set(ours):
    problems.append("names differ: only TF %s, only ours %s" % (sorted(set(theirs) - set(ours))[:3], sorted(set(ours) - set(theirs))[:3]))
for name in sorted(set(theirs) & set(ours)):
    t = reader.get_tensor(name)
    o = ours[name]
    if t.shape != o.shape or t.dtype != o.dtype or t.tobytes() != o.tobytes():
        problems.append("%s: TF %s %s vs ours %s %s" % (name, t.dtype, t.shape, o.dtype, o.shape))
gs = int(reader.get_tensor("global_step"))
if gs != step:
    problems.append("global_step %d, expected %d" % (gs, step))
report("check_tf_reads_ours", not problems,
       "%d tensors of %s identical in TensorFlow, global_step %d" % (len(theirs), prefix, gs) if not problems
       else "; ".join(problems[:5]))
