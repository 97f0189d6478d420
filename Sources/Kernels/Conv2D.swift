// Regular K×K convolution, NHWC, TF `SAME` padding, no bias. MobileNetV2 uses it once: the
// 3×3 stride-2 stem (3 → 32 channels). Weights are TF's HWIO layout [K, K, Cin, Cout].
//
// The fast path vectorises over output channels (innermost, contiguous in both y and w) and splits
// output rows across threads; the naive path is the textbook loop nest used as the test reference.

/// Shape of a convolution: batch, input size, channels, kernel and stride.
public struct ConvShape: Equatable {
  public var batch, height, width, inChannels, outChannels, kernel, stride: Int
  public init(batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, kernel: Int, stride: Int) {
    self.batch = batch; self.height = height; self.width = width
    self.inChannels = inChannels; self.outChannels = outChannels
    self.kernel = kernel; self.stride = stride
  }
  public var outHeight: Int { SamePadding.outputSize(height, stride: stride) }
  public var outWidth: Int { SamePadding.outputSize(width, stride: stride) }
  public var padTop: Int { SamePadding.before(height, kernel: kernel, stride: stride) }
  public var padLeft: Int { SamePadding.before(width, kernel: kernel, stride: stride) }
  public var inputCount: Int { batch * height * width * inChannels }
  public var outputCount: Int { batch * outHeight * outWidth * outChannels }
  public var weightCount: Int { kernel * kernel * inChannels * outChannels }
}

/// y[N,Ho,Wo,Co] = conv(x[N,H,W,Ci], w[K,K,Ci,Co]).
public func conv2dForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                          _ s: ConvShape) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  let (Ho, Wo, pt, pl) = (s.outHeight, s.outWidth, s.padTop, s.padLeft)
  parallelChunks(s.batch * Ho) { _, rows in
    for row in rows {
      let n = row / Ho, oy = row % Ho
      for ox in 0..<Wo {
        let out = y + ((n * Ho + oy) * Wo + ox) * Co
        out.update(repeating: 0, count: Co)
        for ky in 0..<K {
          let iy = oy * S - pt + ky
          if iy < 0 || iy >= H { continue }
          for kx in 0..<K {
            let ix = ox * S - pl + kx
            if ix < 0 || ix >= W { continue }
            let xin = x + ((n * H + iy) * W + ix) * Ci
            let wk = w + (ky * K + kx) * Ci * Co
            for ci in 0..<Ci {
              let v = xin[ci]
              let wrow = wk + ci * Co
              for co in 0..<Co { out[co] += v * wrow[co] }
            }
          }
        }
      }
    }
  }
}

/// dw[K,K,Ci,Co] += Σ x ⊗ dy; dx (if given) = convᵀ(dy) (overwritten).
public func conv2dBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                           dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                           _ s: ConvShape, scratch: Scratch) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  let (Ho, Wo, pt, pl) = (s.outHeight, s.outWidth, s.padTop, s.padLeft)
  let wc = s.weightCount
  let rows = s.batch * Ho
  let partial = scratch.zeroed(chunkCount(rows) * wc)
  let used = parallelChunks(rows) { chunk, range in
    let pdw = partial + chunk * wc
    for row in range {
      let n = row / Ho, oy = row % Ho
      for ox in 0..<Wo {
        let g = dy + ((n * Ho + oy) * Wo + ox) * Co
        for ky in 0..<K {
          let iy = oy * S - pt + ky
          if iy < 0 || iy >= H { continue }
          for kx in 0..<K {
            let ix = ox * S - pl + kx
            if ix < 0 || ix >= W { continue }
            let xin = x + ((n * H + iy) * W + ix) * Ci
            let pk = pdw + (ky * K + kx) * Ci * Co
            for ci in 0..<Ci {
              let v = xin[ci]
              let prow = pk + ci * Co
              for co in 0..<Co { prow[co] += v * g[co] }
            }
          }
        }
      }
    }
  }
  for c in 0..<used {
    let p = partial + c * wc
    for i in 0..<wc { dw[i] += p[i] }
  }
  guard let dx else { return }
  // Input gradient: each image is independent, so images go to threads and scatter within.
  parallelChunks(s.batch) { _, images in
    for n in images {
      (dx + n * H * W * Ci).update(repeating: 0, count: H * W * Ci)
      for oy in 0..<Ho {
        for ox in 0..<Wo {
          let g = dy + ((n * Ho + oy) * Wo + ox) * Co
          for ky in 0..<K {
            let iy = oy * S - pt + ky
            if iy < 0 || iy >= H { continue }
            for kx in 0..<K {
              let ix = ox * S - pl + kx
              if ix < 0 || ix >= W { continue }
              let dxin = dx + ((n * H + iy) * W + ix) * Ci
              let wk = w + (ky * K + kx) * Ci * Co
              for ci in 0..<Ci {
                let wrow = wk + ci * Co
                var acc: Float = 0
                for co in 0..<Co { acc += wrow[co] * g[co] }
                dxin[ci] += acc
              }
            }
          }
        }
      }
    }
  }
}

// MARK: - Naive reference

public func conv2dForwardNaive(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                               _ s: ConvShape) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for co in 0..<Co {
    var acc = 0.0
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      for ci in 0..<Ci {
        acc += Double(x[((n * H + iy) * W + ix) * Ci + ci]) * Double(w[((ky * K + kx) * Ci + ci) * Co + co])
      }
    } }
    y[((n * s.outHeight + oy) * s.outWidth + ox) * Co + co] = Float(acc)
  } } } }
}

public func conv2dBackwardNaive(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                                dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                _ s: ConvShape) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  dx?.update(repeating: 0, count: s.inputCount)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for co in 0..<Co {
    let g = dy[((n * s.outHeight + oy) * s.outWidth + ox) * Co + co]
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      for ci in 0..<Ci {
        let xi = ((n * H + iy) * W + ix) * Ci + ci
        let wi = ((ky * K + kx) * Ci + ci) * Co + co
        dw[wi] += x[xi] * g
        dx?[xi] += w[wi] * g
      }
    } }
  } } } }
}
