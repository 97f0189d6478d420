"""TF-slim's MobileNetV2 inference graph written with TensorFlow's own ops (tf.nn.conv2d and
depthwise_conv2d with SAME padding, fused batch norm in inference mode, ReLU6), reading the
TF-slim-named tensors from a dict of numpy arrays. Shared by the fixture generator and the
`make interop` checks: it is TensorFlow's arithmetic, not ours, that these compare against.
"""
import numpy as np
import tensorflow as tf

# (output depth, stride, expansion) of the 17 inverted-residual blocks (slim's V2_DEF).
BLOCKS = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
          (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
          (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6)]
MULTIPLIERS = {"mobilenet_v2": 1.0, "mobilenet_v2_140": 1.4, "mobilenet_v2_130": 1.3,
               "mobilenet_v2_075": 0.75, "mobilenet_v2_050": 0.5, "mobilenet_v2_035": 0.35}
EPSILON = 0.001
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def layers(model_name, num_classes):
    """[(scope, kind, kernel, in, out, stride, relu6)] in forward order, plus residual flags per
    block and the logits shapes: the variable list TF-slim creates."""
    m = MULTIPLIERS[model_name]
    d = lambda x: make_divisible(x * m)
    out = [("MobilenetV2/Conv", "conv", 3, 3, d(32), 2, True)]
    blocks = []
    depth = d(32)
    for i, (o, s, e) in enumerate(BLOCKS):
        scope = "MobilenetV2/expanded_conv" + ("" if i == 0 else "_%d" % i)
        inner = depth if e == 1 else make_divisible(depth * e)
        idx = []
        if inner > depth:
            idx.append(len(out))
            out.append((scope + "/expand", "conv", 1, depth, inner, 1, True))
        idx.append(len(out))
        out.append((scope + "/depthwise", "depthwise", 3, inner, inner, s, True))
        idx.append(len(out))
        out.append((scope + "/project", "conv", 1, inner, d(o), 1, False))
        blocks.append((idx, s == 1 and depth == d(o)))
        depth = d(o)
    last = 1280 if m < 1 else d(1280)
    out.append(("MobilenetV2/Conv_1", "conv", 1, depth, last, 1, True))
    return out, blocks, last


def variable_shapes(model_name, num_classes):
    """{name: shape} of the model's variables (weights, BN, logits)."""
    ls, _, last = layers(model_name, num_classes)
    shapes = {}
    for scope, kind, k, ci, co, _, _ in ls:
        if kind == "depthwise":
            shapes[scope + "/depthwise_weights"] = (k, k, ci, 1)
        else:
            shapes[scope + "/weights"] = (k, k, ci, co)
        for t in BN:
            shapes[scope + "/BatchNorm/" + t] = (co,)
    shapes["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = (1, 1, last, num_classes)
    shapes["MobilenetV2/Logits/Conv2d_1c_1x1/biases"] = (num_classes,)
    return shapes


def logits(images, get, model_name, num_classes):
    """Logits [N, classes] of NHWC float32 `images` in [-1, 1]; get(name) returns a tensor or array."""
    ls, blocks, _ = layers(model_name, num_classes)

    def conv_bn(i, x):
        scope, kind, k, ci, co, s, relu6 = ls[i]
        if kind == "depthwise":
            x = tf.nn.depthwise_conv2d(x, get(scope + "/depthwise_weights"), [1, s, s, 1], "SAME")
        else:
            x = tf.nn.conv2d(x, get(scope + "/weights"), [1, s, s, 1], "SAME")
        bn = [get(scope + "/BatchNorm/" + t) for t in BN]
        x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, bn[0], bn[1], mean=bn[2], variance=bn[3],
                                                  epsilon=EPSILON, is_training=False)
        return tf.nn.relu6(x) if relu6 else x

    x = conv_bn(0, tf.convert_to_tensor(images, tf.float32))
    for idx, residual in blocks:
        y = x
        for i in idx:
            y = conv_bn(i, y)
        x = x + y if residual else y
    x = conv_bn(len(ls) - 1, x)
    x = tf.reduce_mean(x, [1, 2], keepdims=True)
    x = tf.nn.conv2d(x, get("MobilenetV2/Logits/Conv2d_1c_1x1/weights"), [1, 1, 1, 1], "SAME")
    x = tf.nn.bias_add(x, get("MobilenetV2/Logits/Conv2d_1c_1x1/biases"))
    return tf.squeeze(x, [1, 2])


def infer_model(names_to_shapes):
    """(model_name, num_classes) of a checkpoint's variable shapes."""
    k = names_to_shapes["MobilenetV2/Logits/Conv2d_1c_1x1/biases"][0]
    for name in MULTIPLIERS:
        want = variable_shapes(name, k)
        if all(tuple(names_to_shapes.get(n, ())) == tuple(s) for n, s in want.items()):
            return name, k
    raise SystemExit("not a MobileNetV2 checkpoint")


def eval_images(tfrecord_glob, image_size, limit=None):
    """(images NHWC in [-1, 1], labels) of TF-slim TFRecords with TF-slim's eval preprocessing at
    central fraction 1.0 (decode, to float in [0, 1], bilinear resize when the size differs, then
    (x - 0.5)·2) — what our `evaluate --central-fraction 1.0` does."""
    files = sorted(tf.io.gfile.glob(tfrecord_glob))
    if not files:
        raise SystemExit("no TFRecords match %s" % tfrecord_glob)
    feats = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
             "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    images, labels = [], []
    for rec in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(rec, feats)
        # TF's default IDCT (the fast integer one), which our decoder also uses.
        img = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
        img = tf.image.convert_image_dtype(img, tf.float32)
        if img.shape[0] != image_size or img.shape[1] != image_size:
            img = tf.image.resize(img, [image_size, image_size], method="bilinear")
        images.append(((img - 0.5) * 2.0).numpy())
        labels.append(int(ex["image/class/label"]))
        if limit and len(labels) >= limit:
            break
    return np.stack(images), np.array(labels)


def top1(logits_fn, images, labels, batch=500):
    correct = 0
    for i in range(0, len(labels), batch):
        z = np.asarray(logits_fn(images[i:i + batch]))
        correct += int((z.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(labels)
