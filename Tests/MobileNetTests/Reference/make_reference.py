#!/usr/bin/env python3
"""Writes the PyTorch reference fixture for MobileNetTests.ReferenceTests.

An independent MobileNetV2 in PyTorch (float64), written from TF-slim's mobilenet_v2.py and not from
our Swift code: V2_DEF, _make_divisible, finegrain Conv_1, TF SAME padding (emulated with F.pad:
total = max((ceil(n/s)-1)*s + k - n, 0), before = total // 2), batch norm eps 1e-3 with batch
statistics (training mode) and decay 0.997 for the moving statistics (Bessel-corrected variance, as
TF's fused batch norm), ReLU6, linear bottlenecks, residual iff stride 1 and equal depth, global
average pool, 1x1 logits conv with bias, tf.losses.softmax_cross_entropy with label smoothing.
Dropout is off (the test runs ForwardMode(batchNormTraining: true, dropout: false)).

Output: one safetensors file with
  <slim name>                    F32  every trainable tensor and BN moving statistic (TF layouts:
                                      conv HWIO, depthwise [3,3,C,1], logits [1,1,C,K])
  input                          F32  [N, H, W, 3] NHWC in [-1, 1]
  labels                         I64  [N]
  ref/logits                     F64  [N, K] (training-mode BN)
  ref/loss                       F64  []
  ref/inference_logits           F64  [N, K] (moving statistics)
  ref/grad/<slim name>           F32  d loss / d tensor, every trainable tensor (computed in F64)
  ref/moving/<slim name>         F64  the moving statistics after the training forward

Run: ~/bench-venv/bin/python make_reference.py  (torch, numpy, safetensors)
"""
import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

BLOCKS = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6),
          (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6),
          (320, 1, 6)]
EPS = 1e-3
DECAY = 0.997


def make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def same_pad(x, k, s):
    """TF SAME padding on an NCHW tensor (square)."""
    n = x.shape[-1]
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    before = total // 2
    return F.pad(x, (before, total - before, before, total - before))


class Net:
    def __init__(self, multiplier, classes, gen):
        self.layers = []  # (scope, kind, cin, cout, stride, relu6)
        self.tensors = {}
        self.gen = gen
        depth = make_divisible(32 * multiplier)
        self.add("MobilenetV2/Conv", "conv", 3, depth, 2, True)
        self.blocks = []
        for i, (d, s, t) in enumerate(BLOCKS):
            scope = "MobilenetV2/expanded_conv" + ("" if i == 0 else f"_{i}")
            out = make_divisible(d * multiplier)
            inner = depth if t == 1 else make_divisible(depth * t)
            expand = None
            if inner > depth:
                expand = self.add(f"{scope}/expand", "pw", depth, inner, 1, True)
            dw = self.add(f"{scope}/depthwise", "dw", inner, inner, s, True)
            proj = self.add(f"{scope}/project", "pw", inner, out, 1, False)
            self.blocks.append((expand, dw, proj, s == 1 and depth == out))
            depth = out
        last = 1280 if multiplier < 1 else make_divisible(1280 * multiplier)
        self.last = self.add("MobilenetV2/Conv_1", "pw", depth, last, 1, True)
        self.features = last
        self.classes = classes
        lw = "MobilenetV2/Logits/Conv2d_1c_1x1"
        self.tensors[f"{lw}/weights"] = self.normal((1, 1, last, classes), 0.09)
        self.tensors[f"{lw}/biases"] = self.normal((classes,), 0.1)

    def normal(self, shape, std):
        x = torch.randn(shape, generator=self.gen, dtype=torch.float64) * std
        # The model's parameters are float32: the reference computes in float64 from float32 values.
        return x.float().double()

    def add(self, scope, kind, cin, cout, stride, relu6):
        if kind == "dw":
            name, shape = f"{scope}/depthwise_weights", (3, 3, cin, 1)
        elif kind == "conv":
            name, shape = f"{scope}/weights", (3, 3, cin, cout)
        else:
            name, shape = f"{scope}/weights", (1, 1, cin, cout)
        fan_in = shape[0] * shape[1] * (1 if kind == "dw" else cin)
        self.tensors[name] = self.normal(shape, math.sqrt(2.0 / fan_in))
        bn = f"{scope}/BatchNorm"
        self.tensors[f"{bn}/gamma"] = 1 + self.normal((cout,), 0.1)
        self.tensors[f"{bn}/beta"] = self.normal((cout,), 0.1)
        self.tensors[f"{bn}/moving_mean"] = self.normal((cout,), 0.1)
        self.tensors[f"{bn}/moving_variance"] = (1 + self.normal((cout,), 0.1)).abs()
        self.layers.append((scope, kind, cin, cout, stride, relu6, name))
        return len(self.layers) - 1

    def conv_bn(self, i, x, p, training, moving):
        scope, kind, cin, cout, stride, relu6, wname = self.layers[i]
        w = p[wname]
        if kind == "dw":
            wt = w.permute(2, 3, 0, 1)  # [3,3,C,1] -> [C,1,3,3]
            z = F.conv2d(same_pad(x, 3, stride), wt, stride=stride, groups=cin)
        elif kind == "conv":
            wt = w.permute(3, 2, 0, 1)  # HWIO -> OIHW
            z = F.conv2d(same_pad(x, 3, stride), wt, stride=stride)
        else:
            z = F.conv2d(x, w.permute(3, 2, 0, 1))
        bn = f"{scope}/BatchNorm"
        if training:
            mean = z.mean(dim=(0, 2, 3))
            var = z.var(dim=(0, 2, 3), unbiased=False)
            count = z.numel() // cout
            moving[f"{bn}/moving_mean"] = DECAY * p[f"{bn}/moving_mean"] + (1 - DECAY) * mean.detach()
            moving[f"{bn}/moving_variance"] = (DECAY * p[f"{bn}/moving_variance"]
                                               + (1 - DECAY) * var.detach() * count / max(count - 1, 1))
        else:
            mean, var = p[f"{bn}/moving_mean"], p[f"{bn}/moving_variance"]
        y = (z - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS)
        y = y * p[f"{bn}/gamma"][None, :, None, None] + p[f"{bn}/beta"][None, :, None, None]
        return torch.clamp(y, 0, 6) if relu6 else y

    def forward(self, p, x_nhwc, training, moving):
        x = x_nhwc.permute(0, 3, 1, 2)
        x = self.conv_bn(0, x, p, training, moving)
        for expand, dw, proj, residual in self.blocks:
            h = x if expand is None else self.conv_bn(expand, x, p, training, moving)
            h = self.conv_bn(dw, h, p, training, moving)
            h = self.conv_bn(proj, h, p, training, moving)
            x = h + x if residual else h
        x = self.conv_bn(self.last, x, p, training, moving)
        pooled = x.mean(dim=(2, 3))
        lw = "MobilenetV2/Logits/Conv2d_1c_1x1"
        return pooled @ p[f"{lw}/weights"][0, 0] + p[f"{lw}/biases"]


def smoothed_cross_entropy(logits, labels, eps):
    k = logits.shape[1]
    target = F.one_hot(labels, k).double() * (1 - eps) + eps / k
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--multiplier", type=float, default=0.35)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--output", default="mobilenet_v2_035_r64.safetensors")
    a = ap.parse_args()

    gen = torch.Generator().manual_seed(a.seed)
    net = Net(a.multiplier, a.classes, gen)
    x = (torch.rand((a.batch, a.size, a.size, 3), generator=gen, dtype=torch.float64) * 2 - 1).float().double()
    labels = torch.randint(0, a.classes, (a.batch,), generator=gen)

    trainable = {n: t.clone().requires_grad_(True) for n, t in net.tensors.items()
                 if not n.endswith("moving_mean") and not n.endswith("moving_variance")}
    params = dict(net.tensors)
    params.update(trainable)
    moving = {}
    logits = net.forward(params, x, True, moving)
    loss = smoothed_cross_entropy(logits, labels, a.label_smoothing)
    loss.backward()
    with torch.no_grad():
        inference = net.forward(net.tensors, x, False, {})

    # PyTorch's own float32 answer, to show what float32 rounding alone does to these tensors: the
    # Swift test's differences should be of the same order.
    p32 = {n: t.detach().float().requires_grad_(n in trainable) for n, t in params.items()}
    net32 = Net.__new__(Net)
    net32.__dict__.update(net.__dict__)
    logits32 = net32.forward(p32, x.float(), True, {})
    smoothed_cross_entropy(logits32.double(), labels, a.label_smoothing).backward()

    def rel(a32, a64):
        return ((a32.double() - a64).abs().max() / a64.abs().max()).item()
    f32_logits = rel(logits32.detach(), logits.detach())
    f32_grad = max(rel(p32[n].grad, t.grad) for n, t in trainable.items() if t.grad.abs().max() > 1e-12)

    out = {n: t.float().numpy() for n, t in net.tensors.items()}
    out["input"] = x.float().numpy()
    out["labels"] = labels.numpy().astype(np.int64)
    out["ref/logits"] = logits.detach().numpy()
    out["ref/loss"] = np.array(loss.item(), dtype=np.float64)
    out["ref/inference_logits"] = inference.numpy()
    for n, t in trainable.items():
        out[f"ref/grad/{n}"] = t.grad.float().numpy()
    for n, t in moving.items():
        out[f"ref/moving/{n}"] = t.numpy()
    meta = {"multiplier": str(a.multiplier), "classes": str(a.classes), "size": str(a.size),
            "batch": str(a.batch), "label_smoothing": str(a.label_smoothing), "seed": str(a.seed),
            "torch": torch.__version__, "torch_f32_logits_rel": repr(f32_logits),
            "torch_f32_worst_grad_rel": repr(f32_grad)}
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, a.output, metadata=meta)
    print(f"wrote {a.output}: {len(out)} tensors, loss {loss.item():.6f}; torch float32 vs float64: "
          f"logits {f32_logits:.2e}, worst gradient {f32_grad:.2e} (relative to each tensor's max)")


if __name__ == "__main__":
    main()
