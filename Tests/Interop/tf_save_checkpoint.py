"""Re-saves a checkpoint's tensors with TensorFlow's own tf.compat.v1.train.Saver (V2 format), as a
TensorFlow training job would have written them: one tf.Variable per tensor, the same names, a
`checkpoint` state file. Used to make TensorFlow-written checkpoints of real trained weights
(docs/training.md), e.g.

    python Tests/Interop/tf_save_checkpoint.py result/demo/train/model.ckpt-2340.safetensors /tmp/tf/model.ckpt
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402


def main(src, prefix):
    tensors = load_file(src)
    step = int(tensors.get("global_step", 0))
    g = tf.Graph()
    with g.as_default():
        v1 = tf.compat.v1
        for name, value in tensors.items():
            if name == "global_step":
                v1.train.create_global_step()
            else:
                v1.get_variable(name, initializer=value, trainable=not name.endswith(("moving_mean", "moving_variance")))
        saver = v1.train.Saver(save_relative_paths=True)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            if "global_step" in tensors:
                sess.run(v1.train.get_global_step().assign(step))
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            out = saver.save(sess, prefix, global_step=step, write_meta_graph=False)
    print("TensorFlow wrote %s (%d tensors)" % (out, len(tensors)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: tf_save_checkpoint.py SRC.safetensors DST_PREFIX")
    main(sys.argv[1], sys.argv[2])
