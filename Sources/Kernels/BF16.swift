// bfloat16 operands for the convolutions and GEMMs (mixed precision, `--precision bf16`).
//
// bf16 is the top half of a float32: same 8-bit exponent, 7 explicit mantissa bits. The product of
// two bf16 values has at most 16 significant bits, so it is EXACT in float32: a float32 GEMM over
// operands already rounded to bf16 computes the same products as a bf16 × bf16 → fp32 dot-product
// instruction (vdpbf16ps), with float32 accumulation. That is how mixed precision runs here: the
// operands of every convolution and GEMM are rounded to bf16 (round to nearest even, as
// vcvtneps2bf16), the kernels accumulate in float32 and write float32; batch norm, the loss, the
// optimizer and the master weights stay float32.
//
// Two ways to run that arithmetic (BF16Arithmetic, chosen by the CPU: BF16JIT.isAvailable):
// - jit: where /proc/cpuinfo has avx512_bf16 and avx512f/bw/vl, the 1×1 convolutions (forward, input
//   and weight gradients) and the logits run on vdpbf16ps microkernels generated at run time
//   (KernelsJIT: an x86-64 encoder in Swift writes the machine code into an mmap'ed page, which is
//   then made read+execute, never writable and executable at once; see PointwiseBF16.swift).
//   Swift 6.3 cannot call vdpbf16ps itself: the LLVM intrinsic's <32 x bfloat> operand type has no
//   Swift spelling (@_silgen_name on SIMD16<Int32> or Builtin.Vec32xInt16 fails LLVM's verifier),
//   and Debian's OpenBLAS 0.3.21 has no cblas_sbgemm; generating the instruction bytes avoids both.
// - emulated: everywhere else (and for the stem and the depthwise convolutions always), float32
//   kernels on operands rounded by roundToBF16 below. `MNV2_BF16=emulate` on a CPU without
//   AVX512-BF16 runs this path. docs/performance.md has the measurements.
// The scalar conversions (bf16Bits, bf16Value, roundedToBF16) are in Common/BFloat16.swift.
import Common

/// Arithmetic of the convolutions and GEMMs.
public enum Precision: String, CaseIterable, Sendable {
  /// float32 everywhere.
  case fp32
  /// bf16 operands, float32 accumulation and results; float32 batch norm, loss and optimizer.
  case bf16
}

/// dst[i] = roundedToBF16(src[i]); dst may equal src. Split across the compute threads.
/// Written as a branch-free scalar loop that LLVM vectorises (a select per lane): a SIMD16 version
/// with SIMDMask/replace(with:where:) compiled to per-lane code and made the bf16 step 4× slower.
public func roundToBF16(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int) {
  parallelChunks(count, minPerChunk: bf16MinPerThread) { _, r in
    roundToBF16Serial(dst + r.lowerBound, src + r.lowerBound, count: r.count)
  }
}

/// roundToBF16 on the calling thread, for kernels that round their own output block by block.
@inline(__always)
func roundToBF16Serial(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int) {
  let s = UnsafeRawPointer(src).assumingMemoryBound(to: UInt32.self)
  let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: UInt32.self)
  for i in 0..<count {
    let b = s[i]
    let nearest = (b &+ 0x7FFF &+ ((b &>> 16) & 1)) & 0xFFFF_0000
    // NaN (exponent all ones, mantissa non-zero): keep it a quiet NaN; the add could carry it to ±inf.
    let quietNaN = (b | 0x0040_0000) & 0xFFFF_0000
    d[i] = (b & 0x7FFF_FFFF) > 0x7F80_0000 ? quietNaN : nearest
  }
}

/// Runs `apply` over `range` in blocks of about `bf16RoundBlockFloats` floats, rounding each block of
/// rows (`channels` floats each, starting at `out`) to bf16 right after it is written, while it is in cache.
@inline(__always)
func applyThenRound(_ out: UnsafeMutablePointer<Float>, channels: Int, rows range: Range<Int>, round: Bool,
                    _ apply: (Range<Int>) -> Void) {
  guard round else { apply(range); return }
  let step = max(1, bf16RoundBlockFloats / max(1, channels))
  var lo = range.lowerBound
  while lo < range.upperBound {
    let hi = min(range.upperBound, lo + step)
    apply(lo..<hi)
    let p = out + lo * channels
    roundToBF16Serial(p, p, count: (hi - lo) * channels)
    lo = hi
  }
}

/// 32 KiB: a block stays in L1/L2 between the kernel's write and the rounding pass.
let bf16RoundBlockFloats = 8192

/// Below this many elements per thread the rounding pass is not split (it is memory-bound and cheap).
let bf16MinPerThread = 1 << 15

/// Packs float32 into bf16 bit patterns (for the wire and for bf16 storage).
public func packBF16(_ dst: UnsafeMutablePointer<UInt16>, _ src: UnsafePointer<Float>, count: Int) {
  for i in 0..<count { dst[i] = bf16Bits(src[i]) }
}

/// Unpacks bf16 bit patterns into float32 (exact).
public func unpackBF16(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<UInt16>, count: Int) {
  for i in 0..<count { dst[i] = bf16Value(src[i]) }
}
