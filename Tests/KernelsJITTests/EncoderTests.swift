// Every encoder function against the bytes GNU as produces for the same instruction.
// Reference bytes: written once (2026-12-02; the conversion and packed-single instructions
// 2026-12-06) with `gcc -c ref.s` (GNU as, `.intel_syntax noprefix`) on a file of these instructions
// and read back with `objdump -d -M intel ref.o`; the comment above each literal is the instruction
// as assembled.
import XCTest
import KernelsJIT

final class EncoderTests: XCTestCase {
  private func bytes(_ emit: (inout X86Assembler) -> Void) -> [UInt8] {
    var a = X86Assembler()
    emit(&a)
    return a.bytes
  }

  func testVdpbf16psEmbeddedBroadcast() {
    // vdpbf16ps zmm0, zmm28, dword ptr [rdi]{1to16}
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(0), ZMM(28), broadcast: Memory(.rdi)) }, [0x62, 0xf2, 0x1e, 0x50, 0x52, 0x07])
    // vdpbf16ps zmm23, zmm31, dword ptr [rdi+4]{1to16}   (disp8*4)
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(23), ZMM(31), broadcast: Memory(.rdi, 4)) },
                   [0x62, 0xe2, 0x06, 0x50, 0x52, 0x7f, 0x01])
    // vdpbf16ps zmm5, zmm29, dword ptr [rdi+0x400]{1to16}   (disp32)
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(5), ZMM(29), broadcast: Memory(.rdi, 0x400)) },
                   [0x62, 0xf2, 0x16, 0x50, 0x52, 0xaf, 0x00, 0x04, 0x00, 0x00])
    // vdpbf16ps zmm17, zmm30, dword ptr [r10+0x3c]{1to16}
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(17), ZMM(30), broadcast: Memory(.r10, 0x3c)) },
                   [0x62, 0xc2, 0x0e, 0x50, 0x52, 0x4a, 0x0f])
  }

  func testVdpbf16psRegisters() {
    // vdpbf16ps zmm1, zmm2, zmm3
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(1), ZMM(2), ZMM(3)) }, [0x62, 0xf2, 0x6e, 0x48, 0x52, 0xcb])
    // vdpbf16ps zmm23, zmm31, zmm27
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(23), ZMM(31), ZMM(27)) }, [0x62, 0x82, 0x06, 0x40, 0x52, 0xfb])
    // vdpbf16ps zmm0, zmm28, zmm26
    XCTAssertEqual(bytes { $0.vdpbf16ps(ZMM(0), ZMM(28), ZMM(26)) }, [0x62, 0x92, 0x1e, 0x40, 0x52, 0xc2])
  }

  func testVpbroadcastd() {
    // vpbroadcastd zmm26, dword ptr [rdi]
    XCTAssertEqual(bytes { $0.vpbroadcastd(ZMM(26), Memory(.rdi)) }, [0x62, 0x62, 0x7d, 0x48, 0x58, 0x17])
    // vpbroadcastd zmm27, dword ptr [rdi+0x3c0]   (disp32: 0x3c0/4 = 240 > 127)
    XCTAssertEqual(bytes { $0.vpbroadcastd(ZMM(27), Memory(.rdi, 0x3c0)) },
                   [0x62, 0x62, 0x7d, 0x48, 0x58, 0x9f, 0xc0, 0x03, 0x00, 0x00])
    // vpbroadcastd zmm26, dword ptr [rdi+0x10]
    XCTAssertEqual(bytes { $0.vpbroadcastd(ZMM(26), Memory(.rdi, 0x10)) }, [0x62, 0x62, 0x7d, 0x48, 0x58, 0x57, 0x04])
  }

  func testVmovupsLoads() {
    // vmovups zmm28, zmmword ptr [rsi]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(28), Memory(.rsi)) }, [0x62, 0x61, 0x7c, 0x48, 0x10, 0x26])
    // vmovups zmm31, zmmword ptr [rsi+0xc0]   (disp8*64)
    XCTAssertEqual(bytes { $0.vmovups(ZMM(31), Memory(.rsi, 0xc0)) }, [0x62, 0x61, 0x7c, 0x48, 0x10, 0x7e, 0x03])
    // vmovups zmm9, zmmword ptr [rsi+0x1000]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(9), Memory(.rsi, 0x1000)) }, [0x62, 0x71, 0x7c, 0x48, 0x10, 0x4e, 0x40])
    // vmovups zmm20, zmmword ptr [rdx+0x40]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(20), Memory(.rdx, 0x40)) }, [0x62, 0xe1, 0x7c, 0x48, 0x10, 0x62, 0x01])
    // vmovups zmm3{k1}{z}, zmmword ptr [rdx+0x1c0]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(3), Memory(.rdx, 0x1c0), zeroMask: KReg(1)) },
                   [0x62, 0xf1, 0x7c, 0xc9, 0x10, 0x5a, 0x07])
  }

  func testConversionInstructions() {
    // vcvtne2ps2bf16 zmm2, zmm1, zmm0
    XCTAssertEqual(bytes { $0.vcvtne2ps2bf16(ZMM(2), ZMM(1), ZMM(0)) }, [0x62, 0xf2, 0x77, 0x48, 0x72, 0xd0])
    // vcvtne2ps2bf16 zmm17, zmm30, zmm9
    XCTAssertEqual(bytes { $0.vcvtne2ps2bf16(ZMM(17), ZMM(30), ZMM(9)) }, [0x62, 0xc2, 0x0f, 0x40, 0x72, 0xc9])
    // vcvtne2ps2bf16 zmm5, zmm5, zmm24
    XCTAssertEqual(bytes { $0.vcvtne2ps2bf16(ZMM(5), ZMM(5), ZMM(24)) }, [0x62, 0x92, 0x57, 0x48, 0x72, 0xe8])
    // vpermw zmm2, zmm31, zmm2
    XCTAssertEqual(bytes { $0.vpermw(ZMM(2), ZMM(31), ZMM(2)) }, [0x62, 0xf2, 0x85, 0x40, 0x8d, 0xd2])
    // vpermw zmm20, zmm3, zmm9
    XCTAssertEqual(bytes { $0.vpermw(ZMM(20), ZMM(3), ZMM(9)) }, [0x62, 0xc2, 0xe5, 0x48, 0x8d, 0xe1])
    // vpermw zmm0, zmm29, zmm30
    XCTAssertEqual(bytes { $0.vpermw(ZMM(0), ZMM(29), ZMM(30)) }, [0x62, 0x92, 0x95, 0x40, 0x8d, 0xc6])
    // vmovups zmmword ptr [rdi+0x20]{k2}, zmm1   (a displacement not a multiple of 64: disp32)
    XCTAssertEqual(bytes { $0.vmovups(Memory(.rdi, 0x20), ZMM(1), mask: KReg(2)) },
                   [0x62, 0xf1, 0x7c, 0x4a, 0x11, 0x8f, 0x20, 0x00, 0x00, 0x00])
    // vmovups zmm31, zmmword ptr [rcx]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(31), Memory(.rcx)) }, [0x62, 0x61, 0x7c, 0x48, 0x10, 0x39])
    // vmovups zmm1{k1}{z}, zmmword ptr [rsi+0x1840]
    XCTAssertEqual(bytes { $0.vmovups(ZMM(1), Memory(.rsi, 0x1840), zeroMask: KReg(1)) },
                   [0x62, 0xf1, 0x7c, 0xc9, 0x10, 0x4e, 0x61])
  }

  func testPackedSingleArithmetic() {
    // vmulps zmm0, zmm0, zmmword ptr [r8]
    XCTAssertEqual(bytes { $0.vmulps(ZMM(0), ZMM(0), Memory(.r8)) }, [0x62, 0xd1, 0x7c, 0x48, 0x59, 0x00])
    // vmulps zmm1{k1}{z}, zmm1, zmmword ptr [r8+0x40]
    XCTAssertEqual(bytes { $0.vmulps(ZMM(1), ZMM(1), Memory(.r8, 0x40), zeroMask: KReg(1)) },
                   [0x62, 0xd1, 0x74, 0xc9, 0x59, 0x48, 0x01])
    // vmulps zmm17, zmm3, zmmword ptr [r9+0x1000]
    XCTAssertEqual(bytes { $0.vmulps(ZMM(17), ZMM(3), Memory(.r9, 0x1000)) }, [0x62, 0xc1, 0x64, 0x48, 0x59, 0x49, 0x40])
    // vaddps zmm0, zmm0, zmmword ptr [r9]
    XCTAssertEqual(bytes { $0.vaddps(ZMM(0), ZMM(0), Memory(.r9)) }, [0x62, 0xd1, 0x7c, 0x48, 0x58, 0x01])
    // vaddps zmm1{k1}{z}, zmm1, zmmword ptr [r9+0x80]
    XCTAssertEqual(bytes { $0.vaddps(ZMM(1), ZMM(1), Memory(.r9, 0x80), zeroMask: KReg(1)) },
                   [0x62, 0xd1, 0x74, 0xc9, 0x58, 0x49, 0x02])
    // vmaxps zmm0, zmm29, zmm0
    XCTAssertEqual(bytes { $0.vmaxps(ZMM(0), ZMM(29), ZMM(0)) }, [0x62, 0xf1, 0x14, 0x40, 0x5f, 0xc0])
    // vmaxps zmm17, zmm3, zmm25
    XCTAssertEqual(bytes { $0.vmaxps(ZMM(17), ZMM(3), ZMM(25)) }, [0x62, 0x81, 0x64, 0x48, 0x5f, 0xc9])
    // vminps zmm0, zmm30, zmm0
    XCTAssertEqual(bytes { $0.vminps(ZMM(0), ZMM(30), ZMM(0)) }, [0x62, 0xf1, 0x0c, 0x40, 0x5d, 0xc0])
    // vminps zmm17, zmm3, zmm25
    XCTAssertEqual(bytes { $0.vminps(ZMM(17), ZMM(3), ZMM(25)) }, [0x62, 0x81, 0x64, 0x48, 0x5d, 0xc9])
    // vpbroadcastd zmm30, dword ptr [rcx+0x40]
    XCTAssertEqual(bytes { $0.vpbroadcastd(ZMM(30), Memory(.rcx, 0x40)) }, [0x62, 0x62, 0x7d, 0x48, 0x58, 0x71, 0x10])
  }

  func testVmovupsStores() {
    // vmovups zmmword ptr [rdx], zmm0
    XCTAssertEqual(bytes { $0.vmovups(Memory(.rdx), ZMM(0)) }, [0x62, 0xf1, 0x7c, 0x48, 0x11, 0x02])
    // vmovups zmmword ptr [rdx+0x100], zmm23
    XCTAssertEqual(bytes { $0.vmovups(Memory(.rdx, 0x100), ZMM(23)) }, [0x62, 0xe1, 0x7c, 0x48, 0x11, 0x7a, 0x04])
    // vmovups zmmword ptr [rdx+0x9c40]{k1}, zmm7
    XCTAssertEqual(bytes { $0.vmovups(Memory(.rdx, 0x9c40), ZMM(7), mask: KReg(1)) },
                   [0x62, 0xf1, 0x7c, 0x49, 0x11, 0xba, 0x40, 0x9c, 0x00, 0x00])
    // vmovups zmmword ptr [r11+0x40], zmm16
    XCTAssertEqual(bytes { $0.vmovups(Memory(.r11, 0x40), ZMM(16)) }, [0x62, 0xc1, 0x7c, 0x48, 0x11, 0x43, 0x01])
  }

  func testVpxordAndVaddps() {
    // vpxord zmm0, zmm0, zmm0
    XCTAssertEqual(bytes { $0.vpxord(ZMM(0), ZMM(0), ZMM(0)) }, [0x62, 0xf1, 0x7d, 0x48, 0xef, 0xc0])
    // vpxord zmm23, zmm23, zmm23
    XCTAssertEqual(bytes { $0.vpxord(ZMM(23), ZMM(23), ZMM(23)) }, [0x62, 0xa1, 0x45, 0x40, 0xef, 0xff])
    // vaddps zmm1, zmm2, zmm3
    XCTAssertEqual(bytes { $0.vaddps(ZMM(1), ZMM(2), ZMM(3)) }, [0x62, 0xf1, 0x6c, 0x48, 0x58, 0xcb])
    // vaddps zmm20, zmm21, zmm30
    XCTAssertEqual(bytes { $0.vaddps(ZMM(20), ZMM(21), ZMM(30)) }, [0x62, 0x81, 0x54, 0x40, 0x58, 0xe6])
  }

  func testMaskAndVex() {
    // kmovw k1, eax
    XCTAssertEqual(bytes { $0.kmovw(KReg(1), .rax) }, [0xc5, 0xf8, 0x92, 0xc8])
    // kmovw k2, r10d
    XCTAssertEqual(bytes { $0.kmovw(KReg(2), .r10) }, [0xc4, 0xc1, 0x78, 0x92, 0xd2])
    // vzeroupper
    XCTAssertEqual(bytes { $0.vzeroupper() }, [0xc5, 0xf8, 0x77])
  }

  func testInteger() {
    // mov eax, 0x7fff
    XCTAssertEqual(bytes { $0.mov(.rax, imm32: 0x7fff) }, [0xb8, 0xff, 0x7f, 0x00, 0x00])
    // add rdi, 4
    XCTAssertEqual(bytes { $0.add(.rdi, 4) }, [0x48, 0x83, 0xc7, 0x04])
    // add rsi, 0x100
    XCTAssertEqual(bytes { $0.add(.rsi, 0x100) }, [0x48, 0x81, 0xc6, 0x00, 0x01, 0x00, 0x00])
    // add rsi, 0x40
    XCTAssertEqual(bytes { $0.add(.rsi, 0x40) }, [0x48, 0x83, 0xc6, 0x40])
    // add r10, 0x1000
    XCTAssertEqual(bytes { $0.add(.r10, 0x1000) }, [0x49, 0x81, 0xc2, 0x00, 0x10, 0x00, 0x00])
    // sub rcx, 1
    XCTAssertEqual(bytes { $0.sub(.rcx, 1) }, [0x48, 0x83, 0xe9, 0x01])
    // dec rcx
    XCTAssertEqual(bytes { $0.dec(.rcx) }, [0x48, 0xff, 0xc9])
    // cmp rcx, 0
    XCTAssertEqual(bytes { $0.cmp(.rcx, 0) }, [0x48, 0x83, 0xf9, 0x00])
    // test rcx, rcx
    XCTAssertEqual(bytes { $0.test(.rcx, .rcx) }, [0x48, 0x85, 0xc9])
    // push rbx; push r12; pop r12; pop rbx; ret
    XCTAssertEqual(bytes { $0.push(.rbx); $0.push(.r12); $0.pop(.r12); $0.pop(.rbx); $0.ret() },
                   [0x53, 0x41, 0x54, 0x41, 0x5c, 0x5b, 0xc3])
  }

  func testJnz() {
    // `jnz .` (a jump to itself): rel8 −2
    XCTAssertEqual(bytes { $0.jnz(to: $0.position) }, [0x75, 0xfe])
    // 200 bytes of nop after the label `top`, then `jnz top`: rel32 0 − 0xce
    let far = bytes { a in
      for _ in 0..<200 { a.push(.rax) }  // any 1-byte filler; only the distance matters
      a.jnz(to: 0)
    }
    XCTAssertEqual(Array(far.suffix(6)), [0x0f, 0x85, 0x32, 0xff, 0xff, 0xff])
    // `jnz top2` with top2 right after it: rel8 0
    XCTAssertEqual(bytes { $0.jnz(to: $0.position + 2) }, [0x75, 0x00])
  }
}
