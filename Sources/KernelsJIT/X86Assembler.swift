// A tiny x86-64 encoder: exactly the instructions the bf16 GEMM microkernels (BF16Microkernel.swift)
// and the bf16 conversion loops (BF16Conversion.swift) need.
//
// Facts from the Intel SDM (vol. 2, §2.3 VEX, §2.7 EVEX):
//   EVEX = 62 P0 P1 P2 opcode ModRM [SIB] [disp]
//     P0 = R̄ X̄ B̄ R̄' 0 0 m m      (m m: 1 = 0F, 2 = 0F38 map; R/X/B/R' stored inverted)
//     P1 = W v̄v̄v̄v̄ 1 p p          (vvvv: second source, inverted; p p: 0 none, 1 = 66, 2 = F3, 3 = F2)
//     P2 = z L'L b V̄' a a a       (z: zeroing; L'L = 10 for 512 bits; b: embedded broadcast; aaa: opmask)
//   A register operand has 5 bits: ModRM.reg + R + R' (destination), vvvv + V' (second source),
//   ModRM.rm + B + X (register third operand). With a memory operand B extends the base register.
//   disp8*N: an 8-bit displacement is scaled by the operand's size, N = 64 for a full zmm access,
//   N = 4 for a 32-bit broadcast (or a scalar dword); other displacements take the 32-bit form.
// The tests (Tests/KernelsJITTests/EncoderTests.swift) compare every function against GNU as output.

/// General-purpose registers, numbered as the encoding wants them.
public enum GPR: UInt8, Sendable {
  case rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15
  var low: UInt8 { rawValue & 7 }
  var high: UInt8 { rawValue >> 3 }
}

/// zmm0…zmm31.
public struct ZMM: Equatable, Sendable {
  public let index: UInt8
  public init(_ index: Int) { precondition((0..<32).contains(index), "zmm\(index)"); self.index = UInt8(index) }
}

/// An opmask register k0…k7 (k0 as a write mask means "no mask").
public struct KReg: Equatable, Sendable {
  public let index: UInt8
  public init(_ index: Int) { precondition((0..<8).contains(index), "k\(index)"); self.index = UInt8(index) }
}

/// [base + displacement]: the only addressing form the microkernels use.
public struct Memory: Sendable {
  public let base: GPR, displacement: Int32
  public init(_ base: GPR, _ displacement: Int = 0) {
    precondition(Int(Int32.min)...Int(Int32.max) ~= displacement, "displacement \(displacement)")
    self.base = base
    self.displacement = Int32(displacement)
  }
}

public struct X86Assembler {
  public private(set) var bytes: [UInt8] = []
  public init() {}
  /// Offset of the next instruction (a jump target).
  public var position: Int { bytes.count }

  private enum Map: UInt8 { case x0F = 1, x0F38 = 2 }
  private enum Prefix: UInt8 { case none = 0, x66 = 1, xF3 = 2, xF2 = 3 }

  // MARK: EVEX

  /// Opcode byte of an EVEX instruction, after the 4-byte prefix.
  private mutating func evex(_ map: Map, _ prefix: Prefix, w: UInt8 = 0, reg: UInt8, vvvv: UInt8?,
                             rmHigh: (b: UInt8, x: UInt8), broadcast: Bool = false, mask: KReg? = nil,
                             zeroing: Bool = false, opcode: UInt8) {
    let r = (reg >> 3) & 1, r2 = (reg >> 4) & 1
    let v = vvvv ?? 0  // unused vvvv is encoded as 1111 (inverted 0), V' as 1
    var p0: UInt8 = map.rawValue
    p0 |= (1 - r) << 7
    p0 |= (1 - rmHigh.x) << 6
    p0 |= (1 - rmHigh.b) << 5
    p0 |= (1 - r2) << 4
    let p1: UInt8 = w << 7 | ((~v) & 0xF) << 3 | 1 << 2 | prefix.rawValue
    var p2: UInt8 = 0b10 << 5  // L'L = 512 bits
    if zeroing { p2 |= 1 << 7 }
    if broadcast { p2 |= 1 << 4 }
    p2 |= (1 - ((v >> 4) & 1)) << 3
    p2 |= mask?.index ?? 0
    bytes += [0x62, p0, p1, p2, opcode]
  }

  /// ModRM (+SIB) and displacement for [base + disp], `reg` in ModRM.reg, disp8 scaled by `n`.
  private mutating func modRM(reg: UInt8, _ m: Memory, disp8Scale n: Int) {
    let d = Int(m.displacement)
    let mod: UInt8
    // mod 00 with rbp/r13 as base means rip-relative: those take the disp8 form even for 0.
    if d == 0 && m.base.low != GPR.rbp.low { mod = 0 }
    else if d % n == 0 && (-128...127).contains(d / n) { mod = 1 }
    else { mod = 2 }
    bytes.append(mod << 6 | (reg & 7) << 3 | m.base.low)
    if m.base.low == GPR.rsp.low { bytes.append(0x24) }  // SIB: no index, base rsp/r12
    switch mod {
    case 1: bytes.append(UInt8(bitPattern: Int8(d / n)))
    case 2: appendLE32(UInt32(bitPattern: m.displacement))
    default: break
    }
  }

  private mutating func modRM(reg: UInt8, rm: UInt8) { bytes.append(0xC0 | (reg & 7) << 3 | (rm & 7)) }
  private mutating func appendLE32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }

  /// Full zmm memory access (disp8*64).
  private static let zmmBytes = 64
  /// 32-bit element access: broadcast or scalar dword (disp8*4).
  private static let dwordBytes = 4

  /// vdpbf16ps dst, src1, [m]{1to16}: dst.f32[i] += src1.bf16[2i]·m.bf16[0] + src1.bf16[2i+1]·m.bf16[1]
  /// (EVEX.512.F3.0F38.W0 52 /r, embedded 32-bit broadcast).
  public mutating func vdpbf16ps(_ dst: ZMM, _ src1: ZMM, broadcast m: Memory) {
    evex(.x0F38, .xF3, reg: dst.index, vvvv: src1.index, rmHigh: (m.base.high, 0), broadcast: true, opcode: 0x52)
    modRM(reg: dst.index, m, disp8Scale: Self.dwordBytes)
  }

  /// vdpbf16ps dst, src1, src2 (all zmm).
  public mutating func vdpbf16ps(_ dst: ZMM, _ src1: ZMM, _ src2: ZMM) {
    evex(.x0F38, .xF3, reg: dst.index, vvvv: src1.index, rmHigh: ((src2.index >> 3) & 1, src2.index >> 4), opcode: 0x52)
    modRM(reg: dst.index, rm: src2.index)
  }

  /// vpbroadcastd dst, dword [m] (EVEX.512.66.0F38.W0 58 /r).
  public mutating func vpbroadcastd(_ dst: ZMM, _ m: Memory) {
    evex(.x0F38, .x66, reg: dst.index, vvvv: nil, rmHigh: (m.base.high, 0), opcode: 0x58)
    modRM(reg: dst.index, m, disp8Scale: Self.dwordBytes)
  }

  /// vmovups dst{k}{z}, [m] (EVEX.512.0F.W0 10 /r); with a mask the other lanes become zero.
  public mutating func vmovups(_ dst: ZMM, _ m: Memory, zeroMask: KReg? = nil) {
    evex(.x0F, .none, reg: dst.index, vvvv: nil, rmHigh: (m.base.high, 0), mask: zeroMask,
         zeroing: zeroMask != nil, opcode: 0x10)
    modRM(reg: dst.index, m, disp8Scale: Self.zmmBytes)
  }

  /// vmovups [m]{k}, src (EVEX.512.0F.W0 11 /r); with a mask only its lanes are written.
  public mutating func vmovups(_ m: Memory, _ src: ZMM, mask: KReg? = nil) {
    evex(.x0F, .none, reg: src.index, vvvv: nil, rmHigh: (m.base.high, 0), mask: mask, opcode: 0x11)
    modRM(reg: src.index, m, disp8Scale: Self.zmmBytes)
  }

  /// vpxord dst, a, b (EVEX.512.66.0F.W0 EF /r): `vpxord z, z, z` zeroes z (AVX512F only, unlike vxorps zmm).
  public mutating func vpxord(_ dst: ZMM, _ a: ZMM, _ b: ZMM) {
    evex(.x0F, .x66, reg: dst.index, vvvv: a.index, rmHigh: ((b.index >> 3) & 1, b.index >> 4), opcode: 0xEF)
    modRM(reg: dst.index, rm: b.index)
  }

  /// The packed-single arithmetic of map 0F (EVEX.512.0F.W0 op /r): add 58, mul 59, min 5D, max 5F.
  private enum PackedSingle: UInt8 { case add = 0x58, mul = 0x59, min = 0x5D, max = 0x5F }
  private mutating func packedSingle(_ op: PackedSingle, _ dst: ZMM, _ a: ZMM, _ b: ZMM) {
    evex(.x0F, .none, reg: dst.index, vvvv: a.index, rmHigh: ((b.index >> 3) & 1, b.index >> 4), opcode: op.rawValue)
    modRM(reg: dst.index, rm: b.index)
  }
  /// With a memory operand; `zeroMask`: lanes outside it become zero and are not read (no fault).
  private mutating func packedSingle(_ op: PackedSingle, _ dst: ZMM, _ a: ZMM, _ m: Memory, zeroMask: KReg?) {
    evex(.x0F, .none, reg: dst.index, vvvv: a.index, rmHigh: (m.base.high, 0), mask: zeroMask, zeroing: zeroMask != nil,
         opcode: op.rawValue)
    modRM(reg: dst.index, m, disp8Scale: Self.zmmBytes)
  }

  /// vaddps dst, a, b.
  public mutating func vaddps(_ dst: ZMM, _ a: ZMM, _ b: ZMM) { packedSingle(.add, dst, a, b) }
  /// vaddps dst{k}{z}, a, [m].
  public mutating func vaddps(_ dst: ZMM, _ a: ZMM, _ m: Memory, zeroMask: KReg? = nil) {
    packedSingle(.add, dst, a, m, zeroMask: zeroMask)
  }
  /// vmulps dst{k}{z}, a, [m].
  public mutating func vmulps(_ dst: ZMM, _ a: ZMM, _ m: Memory, zeroMask: KReg? = nil) {
    packedSingle(.mul, dst, a, m, zeroMask: zeroMask)
  }
  /// vmaxps dst, a, b: dst = a > b ? a : b per lane (b where either is NaN).
  public mutating func vmaxps(_ dst: ZMM, _ a: ZMM, _ b: ZMM) { packedSingle(.max, dst, a, b) }
  /// vminps dst, a, b: dst = a < b ? a : b per lane (b where either is NaN).
  public mutating func vminps(_ dst: ZMM, _ a: ZMM, _ b: ZMM) { packedSingle(.min, dst, a, b) }

  /// vcvtne2ps2bf16 dst, hi, lo (EVEX.512.F2.0F38.W0 72 /r): dst.bf16[i] = bf16(lo.f32[i]) for i < 16,
  /// bf16(hi.f32[i − 16]) above (nearest even; denormal inputs and outputs are zero, NaN made quiet).
  public mutating func vcvtne2ps2bf16(_ dst: ZMM, _ hi: ZMM, _ lo: ZMM) {
    evex(.x0F38, .xF2, reg: dst.index, vvvv: hi.index, rmHigh: ((lo.index >> 3) & 1, lo.index >> 4), opcode: 0x72)
    modRM(reg: dst.index, rm: lo.index)
  }

  /// vpermw dst, indices, src (EVEX.512.66.0F38.W1 8D /r, AVX512BW): dst.word[i] = src.word[indices.word[i] & 31].
  public mutating func vpermw(_ dst: ZMM, _ indices: ZMM, _ src: ZMM) {
    evex(.x0F38, .x66, w: 1, reg: dst.index, vvvv: indices.index, rmHigh: ((src.index >> 3) & 1, src.index >> 4),
         opcode: 0x8D)
    modRM(reg: dst.index, rm: src.index)
  }

  // MARK: VEX

  /// kmovw k, r32 (VEX.L0.0F.W0 92 /r): the 2-byte VEX form, or the 3-byte one for r8d…r15d.
  public mutating func kmovw(_ k: KReg, _ src: GPR) {
    if src.high == 0 {
      bytes += [0xC5, 0xF8, 0x92]
    } else {
      bytes += [0xC4, 0b1100_0001, 0x78, 0x92]  // R̄ X̄ = 1, B̄ = 0, map 0F; W0, vvvv unused, L0, no prefix
    }
    modRM(reg: k.index, rm: src.low)
  }

  /// vzeroupper (VEX.128.0F.WIG 77): avoids the SSE/AVX transition penalty in the caller.
  public mutating func vzeroupper() { bytes += [0xC5, 0xF8, 0x77] }

  // MARK: Integer

  private mutating func rexW(_ rm: GPR) { bytes.append(0x48 | rm.high) }

  /// The group-1 ALU op (/digit) r64, imm: imm8 form (83) when it fits, else imm32 (81).
  private mutating func alu(_ digit: UInt8, _ r: GPR, _ imm: Int32) {
    rexW(r)
    if (-128...127).contains(imm) {
      bytes.append(0x83); modRM(reg: digit, rm: r.low); bytes.append(UInt8(bitPattern: Int8(imm)))
    } else {
      bytes.append(0x81); modRM(reg: digit, rm: r.low); appendLE32(UInt32(bitPattern: imm))
    }
  }
  public mutating func add(_ r: GPR, _ imm: Int32) { alu(0, r, imm) }
  public mutating func sub(_ r: GPR, _ imm: Int32) { alu(5, r, imm) }
  public mutating func cmp(_ r: GPR, _ imm: Int32) { alu(7, r, imm) }

  /// dec r64 (REX.W FF /1).
  public mutating func dec(_ r: GPR) { rexW(r); bytes.append(0xFF); modRM(reg: 1, rm: r.low) }

  /// test a, b (REX.W 85 /r).
  public mutating func test(_ a: GPR, _ b: GPR) {
    bytes.append(0x48 | b.high << 2 | a.high); bytes.append(0x85); modRM(reg: b.low, rm: a.low)
  }

  /// mov r32, imm32 (B8+rd; zero-extends into the 64-bit register).
  public mutating func mov(_ r: GPR, imm32: UInt32) {
    if r.high != 0 { bytes.append(0x41) }
    bytes.append(0xB8 + r.low); appendLE32(imm32)
  }

  /// jnz to an earlier (or the current) position: rel8 when it reaches, else rel32.
  public mutating func jnz(to target: Int) {
    let short = target - (position + 2)
    if (-128...127).contains(short) {
      bytes += [0x75, UInt8(bitPattern: Int8(short))]
    } else {
      let near = Int32(target - (position + 6))
      bytes += [0x0F, 0x85]; appendLE32(UInt32(bitPattern: near))
    }
  }

  public mutating func push(_ r: GPR) { if r.high != 0 { bytes.append(0x41) }; bytes.append(0x50 + r.low) }
  public mutating func pop(_ r: GPR) { if r.high != 0 { bytes.append(0x41) }; bytes.append(0x58 + r.low) }
  public mutating func ret() { bytes.append(0xC3) }
}
