"""Writes the TensorFlow-made fixtures of Tests/CheckpointTests/Fixtures with TensorFlow itself:

  tf_mnv2_035/model.ckpt-1002.{index,data-00000-of-00001}, tf_mnv2_035/checkpoint
      a V2 checkpoint written by tf.compat.v1.train.Saver of mobilenet_v2_035 with 10 classes:
      every TF-slim variable, two real MomentumOptimizer steps on the logits layer (so its
      `/Momentum` slots are non-zero; the rest of the network is frozen, which keeps the fixture
      small), ExponentialMovingAverage shadows of every weight and BN statistic, global_step 1002
  tf_mnv2_035_logits.safetensors
      `images` [4, 32, 32, 3] in [-1, 1], TensorFlow's logits for them with the raw weights
      (`logits_raw`) and with the moving averages (`logits_ema`), both [4, 10]

Run from the repository root with a Python that has tensorflow and safetensors:
    python Tests/Interop/make_tf_fixtures.py Tests/CheckpointTests/Fixtures
"""
import os
import shutil
import sys

import numpy as np
import tensorflow as tf
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnv2_tf  # noqa: E402

MODEL, CLASSES, SIZE, IMAGES = "mobilenet_v2_035", 10, 32, 4


def initial_value(name, shape, rng):
    if name.endswith("gamma"):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith("beta") or name.endswith("moving_mean") or name.endswith("biases"):
        return rng.normal(0, 0.1, shape)
    if name.endswith("moving_variance"):
        return rng.uniform(0.5, 2.0, shape)
    fan_in = int(np.prod(shape[:-1])) if not name.endswith("depthwise_weights") else shape[0] * shape[1]
    return rng.normal(0, 1.0 / np.sqrt(fan_in), shape)


def main(out_dir):
    rng = np.random.default_rng(10)
    ckpt_dir = os.path.join(out_dir, "tf_mnv2_035")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    os.makedirs(ckpt_dir)
    images = rng.uniform(-1, 1, (IMAGES, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(IMAGES) % CLASSES
    shapes = mnv2_tf.variable_shapes(MODEL, CLASSES)
    g = tf.Graph()
    with g.as_default():
        v1 = tf.compat.v1
        variables = {}
        for name, shape in shapes.items():
            trainable = not name.endswith(("moving_mean", "moving_variance"))
            variables[name] = v1.get_variable(name, initializer=initial_value(name, shape, rng).astype(np.float32),
                                              trainable=trainable)
        step = v1.train.get_or_create_global_step()
        x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3])
        logits = mnv2_tf.logits(x, variables.__getitem__, MODEL, CLASSES)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        head = [v for n, v in variables.items() if n.startswith("MobilenetV2/Logits/")]
        train = v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss, global_step=step, var_list=head)
        ema = v1.train.ExponentialMovingAverage(0.9)
        ema_op = ema.apply(list(variables.values()))
        # Move every variable away from its shadow's initial value so that raw and averaged differ.
        perturb = tf.group(*[v.assign_add(0.05 * tf.random.stateless_normal(v.shape, [7, i]) * tf.abs(v))
                             for i, v in enumerate(variables.values())])
        saver = v1.train.Saver()  # V2 format
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(step.assign(1000))
            for _ in range(2):
                sess.run(train, {x: images})
            sess.run(perturb)
            sess.run(ema_op)
            raw = sess.run(logits, {x: images})
            shadows = sess.run({n: ema.average(v) for n, v in variables.items()})
            prefix = saver.save(sess, os.path.join(ckpt_dir, "model.ckpt"), global_step=step, write_meta_graph=False)
    # The same network on the shadows (TF's ops again, eagerly).
    ema_logits = mnv2_tf.logits(images, shadows.__getitem__, MODEL, CLASSES).numpy()
    # Saver writes absolute paths into the state file; relative ones keep the fixture movable.
    with open(os.path.join(ckpt_dir, "checkpoint"), "w") as f:
        base = os.path.basename(prefix)
        f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' % (base, base))
    save_file({"images": images, "logits_raw": raw.astype(np.float32), "logits_ema": ema_logits.astype(np.float32)},
              os.path.join(out_dir, "tf_mnv2_035_logits.safetensors"))
    assert not np.allclose(raw, ema_logits)
    print("wrote %s (%d variables), logits of %d images" % (prefix, len(shapes), IMAGES))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Tests/CheckpointTests/Fixtures")
