// The float32 → bf16 conversions that feed the JIT GEMMs (convertRowsToBF16, packBF16B's row pairs,
// interleaveRowPairsBF16), as generated loops on vcvtne2ps2bf16: one instruction rounds 16 or 32
// floats, where the Swift loop on `bf16Bits` (AVX2 integer arithmetic) takes ~15 per 8. They ran on
// every block of every bf16 1×1 GEMM, 8 % of a 1.0/224 bf16 step (docs/performance.md, round 19).
//
// The same rounding as `bf16Bits` (nearest even, NaN made quiet, overflow to ±infinity) except for
// float32 denormals (|x| < 2⁻¹²⁶): the instruction takes them as zero and gives ±0, as oneDNN's bf16
// does on the same hardware; `bf16Bits` keeps them (the emulation and the wire format).
//
// A conversion can first apply a pending batch norm (+ ReLU6) per column, a = z·scale + shift
// clamped to [0, 6], with the float32 kernels' arithmetic (a multiply, then an add; NaN kept), so the
// JIT GEMMs read a layer's raw z without a float32 copy of its activation in between.
//
// System V call: rdi = destination, rsi = source, rdx = rows (or row pairs, ≥ 1), rcx = `constants`
// (the row-pair word permutation, then 6.0), r8 = scale, r9 = shift (both unused without an
// activation). Caller-saved registers only (rax, k1…k3, zmm0…2, zmm29…31); vzeroupper before ret.

/// One generated conversion loop: the column count and the strides are baked in.
public struct BF16ConversionShape: Hashable, Sendable {
  public enum Layout: Hashable, Sendable {
    /// dst row r = bf16(src row r), `columns` words; an odd `columns` also writes a zero word after them.
    case rows
    /// dst pair p = one 32-bit word per column, the even row's bf16 in the low half and the odd
    /// row's in the high half; `single`: the odd row is zero (the last row of an odd count).
    case rowPairs(single: Bool)
  }
  /// What the loop applies to each value before rounding it.
  public enum Activation: Hashable, Sendable {
    case none
    /// z·scale[c] + shift[c], with `relu6` clamped to [0, 6].
    case batchNorm(relu6: Bool)
  }
  public let layout: Layout
  public let activation: Activation
  public let columns: Int
  /// Bytes from one source row to the next.
  public let sourceRowBytes: Int
  /// Bytes from one destination row (`rows`) or row pair (`rowPairs`) to the next.
  public let destinationStepBytes: Int

  public init(layout: Layout, activation: Activation = .none, columns: Int, sourceRowBytes: Int, destinationStepBytes: Int) {
    precondition(columns >= 1 && sourceRowBytes >= 0 && destinationStepBytes >= 0, "conversion of \(columns) columns")
    (self.layout, self.activation, self.columns, self.sourceRowBytes, self.destinationStepBytes) =
      (layout, activation, columns, sourceRowBytes, destinationStepBytes)
  }
}

/// The batch norm (+ ReLU6) of the layer that made a conversion's source, per column (see the top).
public struct BF16InputActivation {
  public let scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool
  public init(scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool) {
    (self.scale, self.shift, self.relu6) = (scale, shift, relu6)
  }
  var shape: BF16ConversionShape.Activation { .batchNorm(relu6: relu6) }
  /// The float32 kernels' arithmetic (Kernels' batchNormApply): a multiply, then an add, then the clamp.
  @inline(__always) func apply(_ z: Float, column c: Int) -> Float {
    let v = z * scale[c] + shift[c]
    guard relu6 else { return v }
    return v < 0 ? 0 : (v > 6 ? 6 : v)
  }
}

public enum BF16Conversion {
  public typealias Function = @convention(c) (UnsafeMutableRawPointer, UnsafeRawPointer, Int, UnsafeRawPointer,
                                              UnsafeRawPointer, UnsafeRawPointer) -> Void

  /// 16 words, then 6.0 as a float: word i of the row-pair layout's 16 columns comes from word i of
  /// this permutation of vcvtne2ps2bf16's result (even row in words 0…15, odd row in 16…31): e0 o0 e1 o1 …;
  /// 6.0 is ReLU6's bound, broadcast from here.
  static let constants: UnsafeRawPointer = {
    let raw = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 64)
    let words = raw.bindMemory(to: UInt16.self, capacity: 32)
    for j in 0..<16 { words[2 * j] = UInt16(j); words[2 * j + 1] = UInt16(16 + j) }
    (raw + sixOffset).storeBytes(of: Float(6), as: Float.self)
    return UnsafeRawPointer(raw)
  }()
  static let sixOffset = 64

  private static let cache = JITCache<BF16ConversionShape, Function>()

  /// The loop for `s`, generated at first use, then kept.
  public static func function(_ s: BF16ConversionShape) -> Function { cache.function(s, code: code) }

  /// Runs the loop for `s` over `count` rows (or row pairs) from `src` into `dst`.
  @inline(__always)
  static func run(_ s: BF16ConversionShape, _ dst: UnsafeMutablePointer<UInt16>, _ src: UnsafePointer<Float>, count: Int,
                  activation: BF16InputActivation? = nil) {
    guard count > 0 else { return }
    precondition(BF16JIT.isAvailable, "the generated bf16 conversions need a CPU with \(BF16JIT.requiredFlags)")
    precondition((activation == nil) == (s.activation == .none), "an activation needs its scale and shift")
    let scale = UnsafeRawPointer(activation?.scale ?? src), shift = UnsafeRawPointer(activation?.shift ?? src)
    function(s)(UnsafeMutableRawPointer(dst), UnsafeRawPointer(src), count, constants, scale, shift)
  }

  /// The row-pair layout of `rows` source rows (`sourceStride` floats apart) into `dst`, one pair every
  /// `destinationStepBytes`: the pairs, then for an odd count the last row with a zero partner.
  static func rowPairs(_ dst: UnsafeMutablePointer<UInt16>, _ src: UnsafePointer<Float>, rows: Int, columns: Int,
                       sourceStride: Int, destinationStepBytes: Int, activation: BF16InputActivation?) {
    func shape(single: Bool) -> BF16ConversionShape {
      BF16ConversionShape(layout: .rowPairs(single: single), activation: activation?.shape ?? .none, columns: columns,
                          sourceRowBytes: sourceStride * 4, destinationStepBytes: destinationStepBytes)
    }
    run(shape(single: false), dst, src, count: rows / 2, activation: activation)
    if rows % 2 == 1 {
      run(shape(single: true), dst + (rows / 2) * destinationStepBytes / 2, src + (rows - 1) * sourceStride, count: 1,
          activation: activation)
    }
  }

  /// The machine code of one loop.
  public static func code(_ s: BF16ConversionShape) -> [UInt8] {
    var a = X86Assembler()
    let tail = s.columns % 16, fullVectors = s.columns / 16
    let (x0, x1, y, zero, six, permutation) = (ZMM(0), ZMM(1), ZMM(2), ZMM(29), ZMM(30), ZMM(31))
    let (tailLoad, halfStore, tailStore) = (KReg(1), KReg(2), KReg(3))
    func setMask(_ k: KReg, lanes: Int) { a.mov(.rax, imm32: (1 << UInt32(lanes)) - 1); a.kmovw(k, .rax) }
    if tail > 0 { setMask(tailLoad, lanes: tail) }
    if case .batchNorm(relu6: true) = s.activation {
      a.vpxord(zero, zero, zero)
      a.vpbroadcastd(six, Memory(.rcx, sixOffset))
    }
    /// Loads float vector v of the row at `offset` bytes into x (the tail masked), activated.
    func load(_ x: ZMM, vector v: Int, rowOffset offset: Int = 0) {
      let mask = v == fullVectors ? tailLoad : nil
      a.vmovups(x, Memory(.rsi, offset + 64 * v), zeroMask: mask)
      guard case .batchNorm(let relu6) = s.activation else { return }
      a.vmulps(x, x, Memory(.r8, 64 * v), zeroMask: mask)
      a.vaddps(x, x, Memory(.r9, 64 * v), zeroMask: mask)
      if relu6 { a.vmaxps(x, zero, x); a.vminps(x, six, x) }
    }
    switch s.layout {
    case .rows:
      // 16 floats make 16 words, the low half of the result: stored as 8 dwords; a tail of t floats
      // as ⌈t/2⌉ dwords (for an odd t the last word is the zero-masked lane's, the zero pad word).
      setMask(halfStore, lanes: 8)
      if tail > 0 { setMask(tailStore, lanes: (tail + 1) / 2) }
      let loop = a.position
      var v = 0
      while v + 2 <= fullVectors {
        load(x0, vector: v)
        load(x1, vector: v + 1)
        a.vcvtne2ps2bf16(y, x1, x0)
        a.vmovups(Memory(.rdi, 32 * v), y)
        v += 2
      }
      if v < fullVectors {
        load(x0, vector: v)
        a.vcvtne2ps2bf16(y, x0, x0)
        a.vmovups(Memory(.rdi, 32 * v), y, mask: halfStore)
        v += 1
      }
      if tail > 0 {
        load(x0, vector: v)
        a.vcvtne2ps2bf16(y, x0, x0)
        a.vmovups(Memory(.rdi, 32 * v), y, mask: tailStore)
      }
      a.add(.rsi, Int32(s.sourceRowBytes))
      a.add(.rdi, Int32(s.destinationStepBytes))
      a.dec(.rdx)
      a.jnz(to: loop)
    case .rowPairs(let single):
      a.vmovups(permutation, Memory(.rcx))
      let loop = a.position
      for v in 0..<(fullVectors + (tail > 0 ? 1 : 0)) {
        load(x0, vector: v)
        if single { a.vpxord(x1, x1, x1) } else { load(x1, vector: v, rowOffset: s.sourceRowBytes) }
        a.vcvtne2ps2bf16(y, x1, x0)
        a.vpermw(y, permutation, y)
        // 16 columns' 32-bit words: the float lanes' mask.
        a.vmovups(Memory(.rdi, 64 * v), y, mask: v == fullVectors ? tailLoad : nil)
      }
      a.add(.rsi, Int32(2 * s.sourceRowBytes))
      a.add(.rdi, Int32(s.destinationStepBytes))
      a.dec(.rdx)
      a.jnz(to: loop)
    }
    a.vzeroupper()
    a.ret()
    return a.bytes
  }

  /// Loops generated so far (for tests).
  public static var cachedCount: Int { cache.count }
}
