"""Writes a subset of TF-slim TFRecords with remapped labels (for transfer-learning experiments,
docs/training.md): keeps the examples whose label is in MAP, relabels them, optionally keeps only
the first LIMIT per split.

    python Tests/Interop/relabel_tfrecords.py SRC_DIR DST_DIR 5:0,6:1,7:2,8:3,9:4 [LIMIT_TRAIN]
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402


def main(src, dst, mapping, limit=None):
    remap = {int(a): int(b) for a, b in (p.split(":") for p in mapping.split(","))}
    os.makedirs(dst, exist_ok=True)
    for split in ("train", "validation"):
        files = sorted(tf.io.gfile.glob(os.path.join(src, split + "-*")))
        out = os.path.join(dst, "%s-00000-of-00001" % split)
        n = 0
        with tf.io.TFRecordWriter(out) as w:
            for rec in tf.data.TFRecordDataset(files):
                ex = tf.train.Example.FromString(rec.numpy())
                label = ex.features.feature["image/class/label"].int64_list.value[0]
                if label not in remap:
                    continue
                ex.features.feature["image/class/label"].int64_list.value[0] = remap[label]
                w.write(ex.SerializeToString())
                n += 1
                if split == "train" and limit and n >= limit:
                    break
        print("%s: %d examples" % (out, n))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
