"""What the check_*.py scripts of `make interop` share: where the Makefile put things, running our
executables, and the evaluation images decoded by TensorFlow (cached next to the data)."""
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

INTEROP_DIR = os.environ.get("INTEROP_DIR", ".build/interop")
BIN = os.environ.get("BIN", ".build/release")
DATA = os.path.join(INTEROP_DIR, "data")
TRAIN = os.path.join(INTEROP_DIR, "train")
IMAGE_SIZE = int(os.environ.get("INTEROP_IMAGE_SIZE", "32"))
SPLIT = "validation"


def run(args):
    """Runs one of our executables; returns stdout (raises with its stderr on failure)."""
    p = subprocess.run([os.path.join(BIN, args[0])] + args[1:], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("%s failed (%d): %s" % (" ".join(args), p.returncode, (p.stderr or p.stdout).strip()))
    return p.stdout


def our_top1(checkpoint, *extra):
    """(top-1, images) of our `evaluate` on the interop split, TF-slim eval preprocessing at
    central fraction 1.0 (the images are already IMAGE_SIZE square)."""
    out = run(["evaluate", "--checkpoint-path", checkpoint, "--dataset-dir", DATA, "--split", SPLIT,
               "--central-fraction", "1.0", "--batch-size", "500", "--image-size", str(IMAGE_SIZE)] + list(extra))
    m = re.search(r"top1=([0-9.]+) top5=[0-9.]+ images=(\d+)", out)
    if not m:
        raise SystemExit("no score line in evaluate's output: %s" % out)
    return float(m.group(1)), int(m.group(2))


def tf_images():
    """(images, labels) of the split decoded and preprocessed by TensorFlow, cached as .npy."""
    cache = os.path.join(INTEROP_DIR, "%s-%d.npz" % (SPLIT, IMAGE_SIZE))
    if os.path.exists(cache):
        z = np.load(cache)
        return z["images"], z["labels"]
    import mnv2_tf
    images, labels = mnv2_tf.eval_images(os.path.join(DATA, SPLIT + "-*"), IMAGE_SIZE)
    np.savez(cache, images=images, labels=labels)
    return images, labels


def newest_step():
    steps = [int(m.group(1)) for n in os.listdir(TRAIN) for m in [re.match(r"model\.ckpt-(\d+)\.index$", n)] if m]
    if not steps:
        raise SystemExit("no TensorFlow checkpoint in %s (train with --checkpoint-format tf or both)" % TRAIN)
    return max(steps)


def report(name, ok, text):
    print("%s: %s: %s" % (name, "PASS" if ok else "FAIL", text))
    sys.exit(0 if ok else 1)
