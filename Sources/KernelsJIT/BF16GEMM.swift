// The bf16 GEMM on the generated microkernels: C[M, N] (+)= A[M, K] · B, A in bf16 rows, B packed once
// into 64-column panels of the pair-interleaved layout the microkernel reads (BF16Microkernel.swift),
// fp32 accumulation and results. Products of two bf16 values are exact in fp32, so the result equals
// the float32 GEMM of the bf16-rounded operands up to the order of the fp32 sums.
#if canImport(Glibc)
import Glibc
#endif
import Common

/// Whether this CPU runs the generated code: vdpbf16ps is AVX512_BF16 on EVEX (AVX512F), and the
/// opmask tail needs AVX512F/BW/VL as the rest of the AVX-512 kernels do (Kernels/ISA.swift).
public enum BF16JIT {
  public static let requiredFlags = ["avx512_bf16", "avx512f", "avx512bw", "avx512vl"]

  /// The CPU has the instructions and the OS lets us map generated code (a system that refuses
  /// executable mappings, e.g. under an SELinux execmem denial, gets the emulation, not a crash).
  public static let isAvailable: Bool = cpuHasFlags && ExecutableMemory.install([returnOpcode]) != nil

  /// `ret`: the one-byte probe of executable memory.
  static let returnOpcode: UInt8 = 0xC3

  /// The flags line of /proc/cpuinfo contains every required flag (false on other systems).
  public static let cpuHasFlags: Bool = CPUFlags.hostHas(requiredFlags)
}

/// B for `bf16Gemm`: K×N bf16 in panels of `panelColumns` columns (the last one narrower, padded to a
/// multiple of 16 with zeros); each panel is [K/2][width][2]: k-pair major, then column, then the pair.
/// An odd K gets a zero row K.
public final class BF16PackedMatrix {
  public static let panelColumns = 16 * BF16Microkernel.maxVectors
  public let k, n, kPairs: Int
  public let storage: UnsafeMutablePointer<UInt16>
  let count: Int

  public init(k: Int, n: Int) {
    precondition(k >= 0 && n >= 0, "\(k)×\(n)")
    self.k = k
    self.n = n
    kPairs = (k + 1) / 2
    count = max(1, kPairs * 2 * ((n + 15) / 16 * 16))
    let raw = UnsafeMutableRawPointer.allocate(byteCount: count * 2, alignment: 64)
    storage = raw.bindMemory(to: UInt16.self, capacity: count)
    storage.initialize(repeating: 0, count: count)
  }
  deinit { UnsafeMutableRawPointer(storage).deallocate() }

  var panelCount: Int { (n + Self.panelColumns - 1) / Self.panelColumns }
  /// Columns of panel p as stored (a multiple of 16).
  func panelWidth(_ p: Int) -> Int { min(Self.panelColumns, (n - p * Self.panelColumns + 15) / 16 * 16) }
  func panel(_ p: Int) -> UnsafeMutablePointer<UInt16> { storage + kPairs * 2 * Self.panelColumns * p }

  /// Index in `storage` of element (row kk, column j).
  @inline(__always) func index(_ kk: Int, _ j: Int) -> Int {
    let p = j / Self.panelColumns
    return kPairs * 2 * Self.panelColumns * p + (kk >> 1) * panelWidth(p) * 2 + (j - p * Self.panelColumns) * 2 + (kk & 1)
  }

  /// The float32 value of element (kk, j) (exact).
  public func value(_ kk: Int, _ j: Int) -> Float { bf16Value(storage[index(kk, j)]) }
}

/// Packs src into `dst` rounded to bf16 (nearest even): src is row-major [K, N] (`transposed` false) or
/// [N, K] read transposed (B = srcᵀ: the weight of a GEMM by wᵀ). With `rows` (< K, row-major only)
/// just the first `rows` rows, and for an odd `rows` a zero row after them (a GEMM over `rows` of K).
/// `generated`: the row-major case on the generated vcvtne2ps2bf16 loop (BF16Conversion.swift:
/// float32 denormals become zero), else Swift's `bf16Bits`.
public func packBF16B(_ dst: BF16PackedMatrix, _ src: UnsafePointer<Float>, transposed: Bool, rows: Int? = nil,
                      generated: Bool = BF16JIT.isAvailable) {
  precondition(rows == nil || (!transposed && rows! <= dst.k), "packBF16B rows \(rows ?? -1) of \(dst.k)")
  let (k, n) = (rows ?? dst.k, dst.n)
  for p in 0..<dst.panelCount {
    let width = dst.panelWidth(p), j0 = p * BF16PackedMatrix.panelColumns
    let columns = min(width, n - j0)
    let panel = dst.panel(p)
    if transposed {
      for kk in 0..<k {
        let row = panel + (kk >> 1) * width * 2 + (kk & 1)
        for j in 0..<columns { row[2 * j] = bf16Bits(src[(j0 + j) * k + kk]) }
      }
    } else if generated {
      BF16Conversion.rowPairs(panel, src + j0, rows: k, columns: columns, sourceStride: n, destinationStepBytes: width * 4,
                              activation: nil)
    } else {
      // Two source rows at a time: one 32-bit word per column (low half the even row), contiguous stores.
      for pair in 0..<((k + 1) / 2) {
        let words = UnsafeMutableRawPointer(panel + pair * width * 2).assumingMemoryBound(to: UInt32.self)
        let even = src + 2 * pair * n + j0
        if 2 * pair + 1 < k {
          let odd = even + n
          for j in 0..<columns { words[j] = UInt32(bf16Bits(even[j])) | UInt32(bf16Bits(odd[j])) << 16 }
        } else {
          // The last row of an odd count: its partner is zero (the pad row of an odd K, or the row
          // after a partial block).
          for j in 0..<columns { words[j] = UInt32(bf16Bits(even[j])) }
        }
      }
    }
  }
}

/// dst[r, 0..<columns] = bf16(src[r, 0..<columns]) (nearest even; NaN stays NaN), rows with strides
/// (elements); an odd `columns` also writes dst[r, columns] = 0, the zero partner of the last k-pair.
/// With `activation`, of the activated values (BF16InputActivation) instead. `generated`: on the
/// generated vcvtne2ps2bf16 loop (float32 denormals become zero), else `bf16Bits`.
public func convertRowsToBF16(_ dst: UnsafeMutablePointer<UInt16>, stride dstStride: Int,
                              _ src: UnsafePointer<Float>, stride srcStride: Int, rows: Int, columns: Int,
                              activation: BF16InputActivation? = nil, generated: Bool = BF16JIT.isAvailable) {
  precondition(dstStride >= columns + (columns & 1), "bf16 rows need an even stride ≥ \(columns)")
  guard columns > 0 else { return }
  if generated {
    let shape = BF16ConversionShape(layout: .rows, activation: activation?.shape ?? .none, columns: columns,
                                    sourceRowBytes: srcStride * 4, destinationStepBytes: dstStride * 2)
    BF16Conversion.run(shape, dst, src, count: rows, activation: activation)
    return
  }
  if let activation {
    for r in 0..<rows {
      for i in 0..<columns { dst[r * dstStride + i] = bf16Bits(activation.apply(src[r * srcStride + i], column: i)) }
      if columns & 1 == 1 { dst[r * dstStride + columns] = 0 }
    }
    return
  }
  if dstStride == columns && srcStride == columns {
    // Contiguous rows (an even K): one flat loop, no per-row overhead on narrow rows.
    let s = UnsafeRawPointer(src).assumingMemoryBound(to: UInt32.self)
    for i in 0..<(rows * columns) { dst[i] = bf16Bits(bitPattern: s[i]) }
    return
  }
  for r in 0..<rows {
    let s = UnsafeRawPointer(src + r * srcStride).assumingMemoryBound(to: UInt32.self)
    let d = dst + r * dstStride
    for i in 0..<columns { d[i] = bf16Bits(bitPattern: s[i]) }
    if columns & 1 == 1 { d[columns] = 0 }
  }
}

/// a[M, K] given as row pairs: dst[p][i][0/1] = bf16(src[2p / 2p+1][i]) for the `rows` (= K) rows of a
/// row-major [K, M] src (row stride `stride`): the layout `bf16GemmRowPairs` reads A in, src's transpose
/// without transposing. An odd `rows` gets a zero partner row. With `activation`, of the activated
/// values (the zero partner stays zero). `generated`: on the generated vcvtne2ps2bf16 loop (float32
/// denormals become zero), else `bf16Bits`.
public func interleaveRowPairsBF16(_ dst: UnsafeMutablePointer<UInt16>, _ src: UnsafePointer<Float>, stride: Int,
                                   rows: Int, columns m: Int, activation: BF16InputActivation? = nil,
                                   generated: Bool = BF16JIT.isAvailable) {
  guard m > 0 else { return }
  if generated {
    BF16Conversion.rowPairs(dst, src, rows: rows, columns: m, sourceStride: stride, destinationStepBytes: m * 4,
                            activation: activation)
    return
  }
  @inline(__always) func bits(_ row: UnsafePointer<Float>, _ i: Int) -> UInt16 {
    bf16Bits(activation.map { $0.apply(row[i], column: i) } ?? row[i])
  }
  for p in 0..<((rows + 1) / 2) {
    let even = src + 2 * p * stride, out = dst + p * m * 2
    if 2 * p + 1 < rows {
      let odd = even + stride
      // One 32-bit word per pair (low half the even row): k-pair order as vdpbf16ps reads it.
      let words = UnsafeMutableRawPointer(out).assumingMemoryBound(to: UInt32.self)
      for i in 0..<m {
        words[i] = UInt32(bits(even, i)) | UInt32(bits(odd, i)) << 16
      }
    } else {
      for i in 0..<m { out[2 * i] = bits(even, i); out[2 * i + 1] = 0 }
    }
  }
}

/// c[M, N] = a · b (or += with `accumulate`) with a as row pairs [kPairs][M][2] (interleaveRowPairsBF16).
public func bf16GemmRowPairs(c: UnsafeMutablePointer<Float>, ldc: Int, pairs a: UnsafePointer<UInt16>, b: BF16PackedMatrix,
                             rows m: Int, accumulate: Bool, kPairs: Int? = nil) {
  gemm(c: c, ldc: ldc, a: a, rowStep: 2, ldaBytes: 4, pairStride: 4 * m, b: b, rows: m, accumulate: accumulate,
       kPairs: kPairs ?? b.kPairs)
}

/// c[M, N] = a · b (or += with `accumulate`), c fp32 with row stride ldc, a bf16 [M, K] with row
/// stride lda (even, ≥ K rounded up to even; the pad column zero), b packed. With `kPairs` only the
/// first 2·kPairs rows of b (and columns of a) take part. Single-threaded: callers split rows.
public func bf16Gemm(c: UnsafeMutablePointer<Float>, ldc: Int, a: UnsafePointer<UInt16>, lda: Int,
                     b: BF16PackedMatrix, rows m: Int, accumulate: Bool, kPairs: Int? = nil) {
  let kPairs = kPairs ?? b.kPairs
  precondition(lda >= 2 * kPairs && lda % 2 == 0 && ldc >= b.n && kPairs <= b.kPairs, "bf16Gemm strides lda \(lda), ldc \(ldc)")
  gemm(c: c, ldc: ldc, a: a, rowStep: lda, ldaBytes: lda * 2, pairStride: 4, b: b, rows: m, accumulate: accumulate,
       kPairs: kPairs)
}

/// Rows per block of the driver: a multiple of every tile height (6, 8, 12, 14), so only the last
/// block has a row tail.
let gemmBlockRows = 168

/// The loop over row blocks, panels and tiles; A row i starts at a + i·rowStep (elements).
private func gemm(c: UnsafeMutablePointer<Float>, ldc: Int, a: UnsafePointer<UInt16>, rowStep: Int, ldaBytes: Int,
                  pairStride: Int, b: BF16PackedMatrix, rows m: Int, accumulate: Bool, kPairs: Int) {
  precondition(BF16JIT.isAvailable, "the bf16 GEMM needs a CPU with \(BF16JIT.requiredFlags)")
  guard m > 0 && b.n > 0 else { return }
  guard kPairs > 0 else {
    if !accumulate { for r in 0..<m { (c + r * ldc).update(repeating: 0, count: b.n) } }
    return
  }
  let ldcBytes = ldc * 4
  // Per panel: its vectors, tail lanes and full-height kernel, resolved once per call.
  struct Panel { let column, vectors, tail, tileRows: Int; let data: UnsafeRawPointer; let full: BF16Microkernel.Function? }
  func kernel(_ rows: Int, _ nv: Int, _ tail: Int) -> BF16Microkernel.Function {
    BF16Microkernel.function(BF16MicrokernelShape(rows: rows, vectors: nv, tailLanes: min(tail, 16), accumulate: accumulate,
                                                  lda: ldaBytes, ldc: ldcBytes, aPairStride: pairStride))
  }
  let panels = (0..<b.panelCount).map { p -> Panel in
    let j0 = p * BF16PackedMatrix.panelColumns
    let nv = b.panelWidth(p) / 16
    let tail = b.n - j0 - (nv - 1) * 16
    let tileRows = BF16Microkernel.tileRows(vectors: nv)
    return Panel(column: j0, vectors: nv, tail: tail, tileRows: tileRows, data: UnsafeRawPointer(b.panel(p)),
                 full: m >= tileRows ? kernel(tileRows, nv, tail) : nil)
  }
  // Blocks of rows, each through every panel: A's block stays in cache while the panels pass.
  var lo = 0
  while lo < m {
    let hi = min(lo + gemmBlockRows, m)
    for p in panels {
      var i = lo
      while i + p.tileRows <= hi {
        p.full!(UnsafeRawPointer(a + i * rowStep), p.data, UnsafeMutableRawPointer(c + i * ldc + p.column), kPairs)
        i += p.tileRows
      }
      if i < hi {
        kernel(hi - i, p.vectors, p.tail)(UnsafeRawPointer(a + i * rowStep), p.data,
                                          UnsafeMutableRawPointer(c + i * ldc + p.column), kPairs)
      }
    }
    lo = hi
  }
}
