// The contract between `Kernels` and its per-instruction-set row kernels (issue 12, item 2).
//
// The hot inner loops (depthwise, batch-norm apply/backward, per-channel statistics) are compiled
// twice from ONE source: `KernelsAVX2` (-target-cpu haswell) holds the files, `KernelsAVX512`
// (-target-cpu skylake-avx512) holds symlinks to them. Each module exposes an enum conforming to
// `RowKernelSet`; `Kernels.KernelISA` picks one at start-up from the CPU's flags, so one binary runs
// AVX-512 code where the CPU has it and AVX2 elsewhere. A row kernel is single-threaded over a range
// of rows; `Kernels` splits the rows over threads and reduces per-thread partial sums.
//
// This module holds only plain data, the protocol, the `StreamAhead` switch and the `@inlinable`
// helpers the row kernels inline (`PrefetchStreams.step`, `streamingFence`, the prefetch of a line),
// so nothing compiled here depends on the instruction set.
#if canImport(Glibc)
import Glibc  // getenv, for `StreamAhead`
#endif

/// A depthwise K×K, stride-S convolution over NHWC with TF `SAME` padding, as the row kernels see it.
public struct DepthwiseGeometry {
  public var height, width, channels, kernel, stride, outHeight, outWidth, padTop, padLeft: Int
  public init(height: Int, width: Int, channels: Int, kernel: Int, stride: Int, outHeight: Int, outWidth: Int,
              padTop: Int, padLeft: Int) {
    self.height = height; self.width = width; self.channels = channels; self.kernel = kernel; self.stride = stride
    self.outHeight = outHeight; self.outWidth = outWidth; self.padTop = padTop; self.padLeft = padLeft
  }
}

/// A regular K×K, stride-S convolution over NHWC with TF `SAME` padding (the stem), as the row kernels see it.
public struct ConvGeometry {
  public var height, width, inChannels, outChannels, kernel, stride, outHeight, outWidth, padTop, padLeft: Int
  public init(height: Int, width: Int, inChannels: Int, outChannels: Int, kernel: Int, stride: Int, outHeight: Int,
              outWidth: Int, padTop: Int, padLeft: Int) {
    self.height = height; self.width = width; self.inChannels = inChannels; self.outChannels = outChannels
    self.kernel = kernel; self.stride = stride; self.outHeight = outHeight; self.outWidth = outWidth
    self.padTop = padTop; self.padLeft = padLeft
  }
}

/// What the batch-norm backward reductions of a layer need while its output gradient `da` is produced:
/// the layer's saved conv output `z`, its BN scale/shift (γ·invStd, β − μ·γ·invStd: the ReLU6 mask is
/// recomputed from z exactly as forward computed the activation), mean and 1/σ. The reductions
/// Σg and Σg·x̂ (g = da masked by 0 < y < 6 when `relu6`) are added into `sums` ([2·C] doubles: Σg then Σg·x̂).
public struct BatchNormReduction {
  public var z, scale, shift, mean, invStd: UnsafePointer<Float>
  public var relu6: Bool
  public var sums: UnsafeMutablePointer<Double>
  /// The gradient is stored as P = scale·g (g: the gradient masked by ReLU6's window, as the
  /// reductions see it) instead of as itself: what `pointwiseBackwardScaled` reads. Honoured by the
  /// depthwise input gradient only (`depthwiseBackward`); the other kernels reject it.
  public var storesScaledGradient = false
  public init(z: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>,
              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>, relu6: Bool, sums: UnsafeMutablePointer<Double>) {
    self.z = z; self.scale = scale; self.shift = shift; self.mean = mean; self.invStd = invStd
    self.relu6 = relu6; self.sums = sums
  }
  /// The same reduction storing P = scale·g (`storesScaledGradient`).
  public func storingScaledGradient() -> BatchNormReduction {
    var r = self
    r.storesScaledGradient = true
    return r
  }
  /// The same reduction writing into other sums (a thread's partials).
  public func with(sums: UnsafeMutablePointer<Double>) -> BatchNormReduction {
    var r = self
    r.sums = sums
    return r
  }
}

/// Per-channel forward statistics accumulated while an activation is produced: Σ(z − shift) and
/// Σ(z − shift)² into `sums` ([2·C] doubles). `shift` is any value close to the channel mean (the
/// shifted-data algorithm: one pass, no cancellation).
public struct ChannelStatistics {
  public var shift: UnsafePointer<Float>
  public var sums: UnsafeMutablePointer<Double>
  public init(shift: UnsafePointer<Float>, sums: UnsafeMutablePointer<Double>) { self.shift = shift; self.sums = sums }
  public func with(sums: UnsafeMutablePointer<Double>) -> ChannelStatistics { ChannelStatistics(shift: shift, sums: sums) }
}

/// A depthwise input given as the producing layer's conv output z: x = act(z·scale + shift) (its
/// batch norm and ReLU6) is made row by row into `buffer` (`bufferRows` input rows of W·C floats, at
/// least K) as the depthwise reads it, so x itself is never stored (the expand layers' activations,
/// the largest tensors of the network, exist only as these few cache-resident rows).
public struct DepthwiseInputTransform {
  public var scale, shift: UnsafePointer<Float>
  public var relu6: Bool
  /// Mixed precision: the transformed activation is rounded to bf16 (it is the depthwise's operand).
  public var roundToBF16: Bool
  public var buffer: UnsafeMutablePointer<Float>
  public var bufferRows: Int
  public init(scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool, roundToBF16: Bool = false,
              buffer: UnsafeMutablePointer<Float>, bufferRows: Int) {
    self.scale = scale; self.shift = shift; self.relu6 = relu6; self.roundToBF16 = roundToBF16
    self.buffer = buffer; self.bufferRows = bufferRows
  }
  public func with(buffer: UnsafeMutablePointer<Float>) -> DepthwiseInputTransform {
    var t = self
    t.buffer = buffer
    return t
  }
}

/// Pixels summed in float before folding into the double accumulators.
public let rowKernelBlockPixels = 32

/// The row kernels one instruction set provides. Rows are NHWC pixels (or, for depthwise, image rows
/// n·H + y); every pointer is the tensor's base, the range says which rows this call handles.
public protocol RowKernelSet {
  /// Name for logs ("AVX-512", "AVX2").
  static var name: String { get }

  /// y rows (n·Ho + oy) of the depthwise forward; statistics of the written outputs if `stats`;
  /// x is z of the previous layer, transformed as read, if `input`.
  static func depthwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                               _ g: DepthwiseGeometry, rows: Range<Int>, stats: ChannelStatistics?,
                               input: DepthwiseInputTransform?, stream: Bool)
  /// dx rows (n·H + iy) of the depthwise input gradient (a gather), plus `residual` if given, and the
  /// batch-norm backward reductions of the layer that produced x over the finished dx if `reduce`.
  static func depthwiseInputGradient(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                     w: UnsafePointer<Float>, _ g: DepthwiseGeometry, rows: Range<Int>,
                                     residual: UnsafePointer<Float>?, reduce: BatchNormReduction?, stream: Bool)
  /// dw[K·K·C] += Σ x·dy over output rows (n·Ho + oy) (x transformed as read if `input`).
  static func depthwiseWeightGradient(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                      x: UnsafePointer<Float>, _ g: DepthwiseGeometry, rows: Range<Int>,
                                      input: DepthwiseInputTransform?)
  /// Statistics of z[rows, C].
  static func channelStatistics(z: UnsafePointer<Float>, channels: Int, rows: Range<Int>, _ stats: ChannelStatistics)
  /// a = act(z·scale + shift) (+ residual) over rows.
  static func batchNormApply(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                             shift: UnsafePointer<Float>, channels: Int, rows: Range<Int>, relu6: Bool,
                             residual: UnsafePointer<Float>?)
  /// g = da (+ residual, written back into da) over rows, then the reductions of `reduce`.
  static func batchNormReduce(da: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>?, channels: Int,
                              rows: Range<Int>, _ reduce: BatchNormReduction)
  /// dz = k·(g − meanG − (z − μ)·meanGX), g = da masked as in forward, over rows. dz may alias da.
  static func batchNormBackwardApply(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                                     _ r: BatchNormReduction, k: UnsafePointer<Float>, meanG: UnsafePointer<Float>,
                                     meanGX: UnsafePointer<Float>, channels: Int, rows: Range<Int>)

  /// y rows (n·Ho + oy) of the direct convolution forward (w in HWIO, Co a multiple of 16): register
  /// accumulators over all K·K·Ci taps, each output written once; statistics of the written outputs,
  /// from the registers, if `stats`; with `prefetch`, each row first pulls into L1 the input rows the
  /// next output row adds.
  static func convForwardDirect16(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                  _ g: ConvGeometry, rows: Range<Int>, stats: ChannelStatistics?, stream: Bool,
                                  prefetch: Bool)

  /// dw[K, K, Ci, Co] += Σ over output pixels (n·Ho·Wo + oy·Wo + ox) of the pixel's input window ⊗
  /// dy[pixel], for K·Ci = 9 (3×3 windows over 3 channels: the stem) and Co a multiple of the vector:
  /// register accumulators, the windows read in place from x (no patch matrix).
  static func convWeightGradientDirect9(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                        x: UnsafePointer<Float>, _ g: ConvGeometry, pixels: Range<Int>)

  /// Columns the GEMM kernels process per register (their packed B's row stride must be a multiple of it).
  static var gemmColumnPadding: Int { get }
  /// c[rows, n] = a[rows, k] · b over the given rows, b packed as [k, ldb] (ldb ≥ n a multiple of
  /// `gemmColumnPadding`, columns n..<ldb zero); with `stats`, the statistics of the written c rows.
  static func gemm(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                   k: Int, n: Int, rows: Range<Int>, stats: ChannelStatistics?, prefetch: UnsafeMutablePointer<PrefetchStreams>?,
                   stream: Bool)
  /// `gemm` of rows of a the caller has just made or read (in L2): register tiles that save FMAs but
  /// leave the loads of a less time to arrive (the 24-column row pairs) run only here.
  static func gemmOfCachedRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                               k: Int, n: Int, rows: Range<Int>, prefetch: UnsafeMutablePointer<PrefetchStreams>?)
  /// `gemm` of act(a·scale + shift) (a: the producing layer's raw z; its batch norm and, with `relu6`,
  /// ReLU6, by the same float expression as `batchNormApply`): each register tile's rows of A are
  /// activated into an L1-resident buffer one tile ahead of the tile that reads them (a block of rows
  /// at a time where b is swept in column panels), so the activation is never stored and z streams in
  /// at the pace of the FMAs. Bit-identical to `batchNormApply` into a buffer followed by `gemm` on it.
  static func gemmActivatedInput(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                                 shift: UnsafePointer<Float>, relu6: Bool, b: UnsafePointer<Float>, ldb: Int,
                                 k: Int, n: Int, rows: Range<Int>, stats: ChannelStatistics?,
                                 prefetch: UnsafeMutablePointer<PrefetchStreams>?, stream: Bool)
  /// c rows = act(a·b·scale + shift) (the batch norm and, with `relu6`, ReLU6 of `gemm`'s product, by
  /// the same float expression as `batchNormApply`), and with `raw` the product itself into raw's
  /// rows (with `stream`, in streaming stores: raw's rows aligned to 64 bytes). n a multiple of 16.
  static func gemmActivated(c: UnsafeMutablePointer<Float>, raw: UnsafeMutablePointer<Float>?, a: UnsafePointer<Float>,
                            b: UnsafePointer<Float>, ldb: Int, k: Int, n: Int, rows: Range<Int>,
                            scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool, stream: Bool)
  /// c[k, n] += a[rows, k]ᵀ · b[rows, n] (the weight gradient of a 1×1 convolution: a sum over rows).
  static func gemmTransposedA(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                              k: Int, n: Int, rows: Range<Int>, prefetch: UnsafeMutablePointer<PrefetchStreams>?)
}

@usableFromInline @_silgen_name("llvm.prefetch.p0")
func llvmPrefetch(_ address: UnsafeRawPointer, _ write: Int32, _ locality: Int32, _ data: Int32)

/// Up to three address ranges to pull into L2 a cache line at a time while a kernel computes on data
/// already in cache, so the next block's operands arrive during this block's FMAs instead of in a
/// separate, memory-stalled pass. The lines are paced evenly over the kernels' work: `step(u)` is
/// called with the vector FMAs the kernel just issued (a row of a weight-gradient tile, an output
/// vector of a product), and the streams owe one line each per `units / lines` of them, so the last
/// line of the largest range goes out with the last FMA of the `units` they were made for. (Issuing
/// every line within the first product, as a fixed lines-per-step rate did, asks one core for several
/// times the bandwidth memory gives it; the lines then queue behind each other instead of overlapping
/// the second product.)
@frozen public struct PrefetchStreams {
  public var s0, e0, s1, e1, s2, e2: UnsafeRawPointer
  /// The third range is the next block's output, which the kernel writes with ordinary stores:
  /// fetched for writing (prefetchw), so its reads for ownership overlap this block's FMAs instead of
  /// stalling the next block's stores. Used by the 1×1 backward whose dx is wider than dy (the
  /// project layers; their BN reductions read dx back, so it is not streamed) and the forward of the
  /// 24-channel project outputs (too narrow to stream). 1.0/224 b32 on Zen 5, ten alternating
  /// profiles: those layers' backwards −0.6 to −1.1 ms at 56², −0.3 at 28². It takes the third slot,
  /// not a fourth: a fourth range made every kernel carrying the streams 0.3–0.6 ms slower per layer.
  public let writesThird: Bool
  /// Lines of the largest range, and the vector FMAs they are spread over.
  public let lines, units: Int
  /// lines · (FMAs so far) − units · (lines issued so far): a line is due whenever it reaches `units`.
  public var credit = 0
  /// The ranges (start, bytes) spread over `units` vector FMAs of `step` calls.
  @inlinable public init(_ r0: (UnsafeRawPointer, Int), _ r1: (UnsafeRawPointer, Int)? = nil,
                         _ r2: (UnsafeRawPointer, Int)? = nil, writesThird: Bool = false, units: Int) {
    let none = UnsafeRawPointer(bitPattern: prefetchLine)!
    s0 = r0.0; e0 = r0.0 + r0.1
    s1 = r1?.0 ?? none; e1 = r1.map { $0.0 + $0.1 } ?? none
    s2 = r2?.0 ?? none; e2 = r2.map { $0.0 + $0.1 } ?? none
    self.writesThird = writesThird
    let bytes = max(r0.1, r1?.1 ?? 0, r2?.1 ?? 0)
    lines = (bytes + prefetchLine - 1) / prefetchLine
    self.units = max(1, units)
  }
  /// The kernel issued `fmas` more vector FMAs: the lines now due.
  @inlinable @inline(__always) public mutating func step(_ fmas: Int) {
    credit += fmas * lines
    while credit >= units {
      credit -= units
      // Locality 2 (prefetcht1: into L2, the next block is read after this one's compute), a literal:
      // llvm.prefetch takes only constants there, and an unoptimised build would pass a load.
      if s0 < e0 { llvmPrefetch(s0, 0, 2, 1); s0 += prefetchLine }
      if s1 < e1 { llvmPrefetch(s1, 0, 2, 1); s1 += prefetchLine }
      if s2 < e2 {
        if writesThird { llvmPrefetch(s2, 1, 2, 1) } else { llvmPrefetch(s2, 0, 2, 1) }
        s2 += prefetchLine
      }
    }
  }
}
/// The loop order of the forward GEMM (`gemm`) for a large b. Row tile by row tile, each tile sweeps
/// every column of b; once b ([k, n] packed) outgrows L2 that re-reads all of b from L3 for every
/// 8 rows. From `minimumBytes` on, the kernel instead takes b one column panel (one or two vectors
/// wide) at a time across all the tiles of a block of rows, so a panel is read from L3 once per
/// block (`rowKernelBlockPixels` = 32 rows: a quarter of the reads of b of the 8-row tile order).
/// Each output is the same sum in the same order either way (bit-identical results).
/// `bench gemm`, 2 threads, Zen 5: 1568x960x320 forward 411–451 → 502 GFLOP/s, its dx 363–381 →
/// 416–435, 1568x320x1280 forward with statistics 337–357 → 406–420; b of 221–614 KiB unchanged.
public enum GemmPanels {
  /// Bytes of packed b from which the panel order is used: a quarter of the 1 MiB L2 (tests lower it
  /// to run every shape both ways).
  public static var minimumBytes = 256 << 10
}

/// One cache line into L1 (prefetcht0; the locality a literal, as llvm.prefetch requires).
@inlinable @inline(__always) public func prefetchLineIntoL1(_ p: UnsafeRawPointer) { llvmPrefetch(p, 0, 3, 1) }

/// The elementwise passes that stream a tensor from memory with little work per line prefetch it
/// ahead of their loads: the BN backward's apply (da and z), the BN reductions (z, whole rows ahead
/// of the channel block) and the depthwise input transform (the producing layer's z) each line
/// `floats` ahead; the depthwise input gradient, whose reductions read z across a row at C-float
/// strides, the next row's z while it works on this one. The hardware prefetchers alone left those
/// loads waiting (`perf annotate`: half of the apply's samples on its two loads). 1.0/224 b32 on Zen
/// 5, `bench train-one --alternate MNV2_STREAM_AHEAD`: step 0.2499 → 0.2326 s (backward −13.4 ms);
/// 512 to 2048 floats ahead gained about as much. Not worth it (measured, not kept): the forward BN
/// apply, and the input gradient's z some pixels ahead in the same channel block (the hardware's
/// stride prefetch has those). Values are unchanged: a prefetch is only a hint.
public enum StreamAhead {
  public static let environmentVariable = "MNV2_STREAM_AHEAD"
  /// On unless MNV2_STREAM_AHEAD=0.
  nonisolated(unsafe) public static var enabled = getenv(environmentVariable).map { String(cString: $0) != "0" } ?? true
  /// Floats ahead of the load (4 KiB).
  public static let floats = 1024
  /// The distance the kernels use now: `floats`, or 0 when off.
  @inlinable public static var distance: Int { enabled ? floats : 0 }
}

/// Bytes per cache line.
public let prefetchLine = 64

/// `stream: true` in a row kernel: its whole 16-float output vectors are written with streaming
/// (non-temporal) stores, which skip reading each line into the cache before overwriting it and do
/// not evict what the kernel reads; the kernel fences them (`streamingFence`) before it returns, so
/// the join that follows publishes them like ordinary stores. Kernels decides (`StreamingStores`).
#if arch(x86_64)
@usableFromInline @_silgen_name("llvm.x86.sse.sfence")
func llvmStoreFence()
#endif

/// Orders every streaming store before it ahead of the stores after it (sfence on x86-64).
@inlinable @inline(__always) public func streamingFence() {
  #if arch(x86_64)
  llvmStoreFence()
  #endif
}
