// The generated bf16 GEMM microkernel (one per shape variant, cached):
//
//   C[mr, 16·nv] (+)= A[mr, K] · Bpanel
//
// A: bf16 k-pairs (one 32-bit word each): pair p of row i at i·lda + p·aPairStride bytes. Row-major
//   A has aPairStride = 4; A given as row pairs of a tall matrix ([K/2][M][2], the weight gradient's
//   xᵀ without a transpose) has lda = 4 and aPairStride = 4·M.
// Bpanel: bf16 [K/2][16·nv][2]: per k-pair, 16·nv columns × the pair, so one 64-byte zmm load holds
//   16 columns' pairs, which is vdpbf16ps's operand layout; A's k-pair is a 32-bit broadcast.
// C: fp32, row stride `ldc` bytes; the last zmm of a row may be partial (`tailLanes` < 16: opmask k1).
//
// System V call: rdi = A, rsi = Bpanel, rdx = C, rcx = K/2 (≥ 1). Only caller-saved registers are
// used (rax, rdi, rsi, rdx, rcx, k1, zmm*), so nothing is pushed; vzeroupper before ret.
// Registers: accumulators zmm0…zmm(mr·nv−1) (≤ 24), B vectors zmm28…31, A broadcasts zmm26/27.
// With one B vector per row (nv = 1) the A pair is an embedded broadcast operand of vdpbf16ps
// ({1to16}, one use); with more it is broadcast once into a register and reused nv times.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One variant: the strides are baked into the displacements (a JIT specialises on the shape).
public struct BF16MicrokernelShape: Hashable, Sendable {
  public let rows: Int, vectors: Int, tailLanes: Int, accumulate: Bool, lda: Int, ldc: Int, aPairStride: Int
  public init(rows: Int, vectors: Int, tailLanes: Int, accumulate: Bool, lda: Int, ldc: Int, aPairStride: Int = 4) {
    self.aPairStride = aPairStride
    precondition(rows >= 1 && vectors >= 1 && vectors <= BF16Microkernel.maxVectors, "\(rows)×\(vectors) tile")
    precondition(rows * vectors <= BF16Microkernel.maxAccumulators, "\(rows)×\(vectors) accumulators")
    precondition((1...16).contains(tailLanes), "tail \(tailLanes)")
    (self.rows, self.vectors, self.tailLanes, self.accumulate, self.lda, self.ldc) =
      (rows, vectors, tailLanes, accumulate, lda, ldc)
  }
}

public enum BF16Microkernel {
  /// zmm per row of the tile (64 columns): B vectors zmm28…31.
  public static let maxVectors = 4
  /// zmm0…23: the rest are the B vectors and the two A broadcasts.
  public static let maxAccumulators = 24
  static let firstBRegister = 28, broadcastRegisters = (26, 27)
  /// Rows per tile for nv vectors per row: fill the accumulators (14 for nv = 1, where each A
  /// broadcast is one embedded operand and no broadcast register is used).
  public static func tileRows(vectors nv: Int) -> Int { [14, 12, 8, 6][nv - 1] }

  public typealias Function = @convention(c) (UnsafeRawPointer, UnsafeRawPointer, UnsafeMutableRawPointer, Int) -> Void

  /// The machine code of one variant.
  public static func code(_ s: BF16MicrokernelShape) -> [UInt8] {
    var a = X86Assembler()
    let (mr, nv) = (s.rows, s.vectors)
    func acc(_ i: Int, _ v: Int) -> ZMM { ZMM(i * nv + v) }
    func bReg(_ v: Int) -> ZMM { ZMM(firstBRegister + v) }
    let tailMask: KReg? = s.tailLanes < 16 ? KReg(1) : nil
    func mask(_ v: Int) -> KReg? { v == nv - 1 ? tailMask : nil }
    if tailMask != nil { a.mov(.rax, imm32: (1 << UInt32(s.tailLanes)) - 1); a.kmovw(KReg(1), .rax) }
    for i in 0..<mr { for v in 0..<nv {
      if s.accumulate { a.vmovups(acc(i, v), Memory(.rdx, i * s.ldc + v * 64), zeroMask: mask(v)) }
      else { a.vpxord(acc(i, v), acc(i, v), acc(i, v)) }
    } }
    let loop = a.position
    for v in 0..<nv { a.vmovups(bReg(v), Memory(.rsi, v * 64)) }
    for i in 0..<mr {
      let pair = Memory(.rdi, i * s.lda)
      if nv == 1 {
        a.vdpbf16ps(acc(i, 0), bReg(0), broadcast: pair)
      } else {
        let bc = ZMM(i % 2 == 0 ? broadcastRegisters.0 : broadcastRegisters.1)
        a.vpbroadcastd(bc, pair)
        for v in 0..<nv { a.vdpbf16ps(acc(i, v), bReg(v), bc) }
      }
    }
    a.add(.rdi, Int32(s.aPairStride))  // next k-pair of every A row
    a.add(.rsi, Int32(nv * 64))  // next k-pair row of the panel
    a.dec(.rcx)
    a.jnz(to: loop)
    for i in 0..<mr { for v in 0..<nv { a.vmovups(Memory(.rdx, i * s.ldc + v * 64), acc(i, v), mask: mask(v)) } }
    a.vzeroupper()
    a.ret()
    return a.bytes
  }

  // MARK: Cache

  private static let cache = JITCache<BF16MicrokernelShape, Function>()

  /// The variant's entry point, generated and installed at first use, then kept.
  public static func function(_ s: BF16MicrokernelShape) -> Function { cache.function(s, code: code) }

  /// Variants generated so far (for tests and the bench).
  public static var cachedCount: Int { cache.count }
}

/// Generated functions by shape: the code made and installed at first use, then kept (the mappings
/// are never freed, so a function pointer handed out stays valid).
final class JITCache<Shape: Hashable, Function>: @unchecked Sendable {
  private let lock = Lock()
  private var functions: [Shape: Function] = [:]
  /// With MNV2_PERF_MAP=1 each generated function is named in /tmp/perf-<pid>.map (perf's map of
  /// JIT code), so `perf report` shows the shape instead of a bare address.
  static var perfMapEnvironmentVariable: String { "MNV2_PERF_MAP" }
  private static var perfMapPath: String? {
    guard let v = getenv(perfMapEnvironmentVariable), String(cString: v) == "1" else { return nil }
    return "/tmp/perf-\(getpid()).map"
  }

  init() {
    precondition(MemoryLayout<Function>.size == MemoryLayout<UnsafeRawPointer>.size, "a JIT function is a C function pointer")
  }

  func function(_ shape: Shape, code: (Shape) -> [UInt8]) -> Function {
    lock.locked {
      if let f = functions[shape] { return f }
      let bytes = code(shape)
      guard let p = ExecutableMemory.install(bytes) else { fatalError("bf16 JIT: mmap/mprotect of executable memory failed") }
      let f = unsafeBitCast(p, to: Function.self)
      functions[shape] = f
      if let path = Self.perfMapPath, let file = fopen(path, "a") {
        fputs("\(String(UInt(bitPattern: p), radix: 16)) \(String(bytes.count, radix: 16)) \(shape)\n", file)
        fclose(file)
      }
      return f
    }
  }

  var count: Int { lock.locked { functions.count } }
}

/// A pthread mutex (Foundation-free; the cache is touched a few times per GEMM call).
final class Lock: @unchecked Sendable {
  private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  init() { pthread_mutex_init(m, nil) }
  deinit { pthread_mutex_destroy(m); m.deallocate() }
  func locked<T>(_ body: () -> T) -> T {
    pthread_mutex_lock(m); defer { pthread_mutex_unlock(m) }
    return body()
  }
}
