#!/usr/bin/env python3
"""Our TensorBoard event files as TensorBoard itself reads them (EventAccumulator).

Without arguments: builds nothing, runs the built `dataset`, `worker` and `evaluate` from
--bin (default $MNV2_BIN, else .build/release) for a tiny training that is interrupted and resumed, evaluates it,
and checks the scalars and their steps. With TRAIN_DIR: checks that train dir's event files
(the training tags at the steps of its metrics.jsonl). Exits non-zero on any failure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TRAIN_TAGS = ["loss", "total_loss", "learning_rate", "train_accuracy", "images_per_sec"]
EVAL_TAGS = ["eval/top1", "eval/top5", "eval/loss"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def scalars(directory):
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def metrics_steps(train_dir):
    with open(os.path.join(train_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def check_train_dir(train_dir, expected_steps):
    found = scalars(train_dir)
    for tag in TRAIN_TAGS:
        steps = [e.step for e in found.get(tag, [])]
        check(steps == expected_steps, f"{train_dir}: {tag} at steps {steps} (expected {expected_steps})")
    if "loss" in found and os.path.exists(os.path.join(train_dir, "metrics.jsonl")):
        with open(os.path.join(train_dir, "metrics.jsonl")) as f:
            rows = {r["step"]: r for r in map(json.loads, f)}
        for e in found["loss"]:
            r = rows.get(e.step)
            # simple_value is float32; metrics.jsonl holds the same float32 value as a double.
            check(r is not None and abs(r["loss"] - e.value) <= 1e-6 * max(1, abs(e.value)),
                  f"loss at step {e.step}: event {e.value} vs metrics.jsonl {r and r['loss']}")


def run(cmd):
    print("+ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print(done.stdout)
        raise SystemExit(f"FAIL: {cmd[0]} exited with {done.returncode}")
    return done.stdout


def tiny_run(bin_dir, work):
    data, train = os.path.join(work, "data"), os.path.join(work, "train")
    run([os.path.join(bin_dir, "dataset"), "synth", "--output", data, "--classes", "3", "--train-examples", "64",
         "--validation-examples", "16", "--image-size", "32", "--shards", "1"])
    flags = ["--dataset-dir", data, "--model-name", "mobilenet_v2_035", "--num-classes", "3", "--image-size", "32",
             "--batch-size", "8", "--learning-rate", "0.01", "--log-every-n-steps", "2",
             "--save-checkpoints-steps", "4", "--train-dir", train, "--threads", "1", "--decode-threads", "1"]
    run([os.path.join(bin_dir, "worker")] + flags + ["--max-train-steps", "6"])
    # As if the run died after logging step 6 but before its checkpoint: resume from step 4.
    os.remove(os.path.join(train, "model.ckpt-6.safetensors"))
    run([os.path.join(bin_dir, "worker")] + flags + ["--max-train-steps", "10"])
    run([os.path.join(bin_dir, "evaluate"), "--checkpoint-path", train, "--dataset-dir", data, "--batch-size", "8",
         "--threads", "1"])
    return train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_dir", nargs="?", help="check this train dir instead of running a tiny training")
    p.add_argument("--bin", default=os.environ.get("MNV2_BIN", os.path.join(ROOT, ".build", "release")),
                   help="where the built executables are (default: $MNV2_BIN, else .build/release)")
    a = p.parse_args()
    if a.train_dir:
        check_train_dir(a.train_dir, metrics_steps(a.train_dir))
    else:
        work = tempfile.mkdtemp(prefix="check-tensorboard-")
        try:
            train = tiny_run(a.bin, work)
            files = sorted(f for f in os.listdir(train) if f.startswith("events.out.tfevents."))
            check(len(files) == 2, f"one event file per run: {files}")
            # TensorBoard drops the first run's step 6 at the resumed run's SessionLog START (step 5).
            check_train_dir(train, [2, 4, 6, 8, 10])
            check(metrics_steps(train) == [2, 4, 6, 8, 10], f"metrics.jsonl steps {metrics_steps(train)}")
            found = scalars(os.path.join(train, "eval"))
            for tag in EVAL_TAGS:
                check([e.step for e in found.get(tag, [])] == [10], f"eval: {tag} at step 10: {found.get(tag)}")
            top1 = found.get("eval/top1", [])
            check(all(0 <= e.value <= 1 for e in top1), f"eval/top1 in [0, 1]: {[e.value for e in top1]}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"check_tensorboard: {len(failures)} failures")
        return 1
    print("check_tensorboard: TensorBoard's EventAccumulator reads every scalar at its step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
