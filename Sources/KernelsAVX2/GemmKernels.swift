// Register-blocked fp32 GEMM row kernels for the skinny 1×1 convolutions of the early layers
// (Kernels/Pointwise.swift decides per shape whether they or cblas_sgemm run; see `useOwnGEMM`).
// Like RowKernels.swift this file is compiled for both instruction sets (KernelsAVX512 holds a
// symlink) and must stay self-contained.
//
// Shapes they are for: rows = N·H·W in the 10⁵–10⁶, K and N in 16…192. A row of A is K contiguous
// floats read in place (no packing: each element is broadcast once per tile), the small B is
// resident in L1/L2, C is written once, and the batch-norm statistics of C come from the registers.
import KernelRows

#if KERNELS_AVX512
/// One zmm register.
typealias GemmVector = SIMD16<Float>
#else
/// One ymm register: SIMD16 would take two of AVX2's 16 registers per accumulator, and the 8-row
/// tile (8 accumulators + the B vector + the broadcast) would spill.
typealias GemmVector = SIMD8<Float>
#endif
private let lanes = GemmVector.scalarCount

@inline(__always) private func vload(_ p: UnsafePointer<Float>) -> GemmVector {
  UnsafeRawPointer(p).loadUnaligned(as: GemmVector.self)
}
@inline(__always) private func vstore(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: GemmVector.self)
}
/// The first `count` (< lanes) floats of v to p: the last column block of a row whose width is not
/// a multiple of the vector must not write into the next row.
@inline(__always) private func storePartial(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
  for j in 0..<count { p[j] = v[j] }
}
/// `count` floats from p, the other lanes 0 (loads that would run past the end of a buffer).
@inline(__always) private func loadPartial(_ p: UnsafePointer<Float>, _ count: Int) -> GemmVector {
  var v = GemmVector()
  for j in 0..<count { v[j] = p[j] }
  return v
}
@inline(__always) private func splat(_ x: Float) -> GemmVector { GemmVector(repeating: x) }

/// Rows of A per forward register tile: 8 independent accumulator chains hide the FMA latency
/// (4 cycles, 1 zmm or 2 ymm FMAs per cycle on Zen 4).
private let gemmTileRows = 8
/// Rows of the weight-gradient reduction per block: A and B blocks (≤ 128·192 floats each) stay
/// in L2 while every (K, N) register tile sweeps them.
private let gemmReductionBlockRows = 128

extension RowKernels {
  public static var gemmColumnPadding: Int { lanes }

  public static func gemm(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                          ldb: Int, k K: Int, n N: Int, rows: Range<Int>, stats: ChannelStatistics?) {
    let withStats = stats != nil
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * ldb) { floatBuffer in
      withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * ldb) { sumBuffer in
        // Padded copies: the last column block reads the shift and its float sums in whole vectors.
        let shift = floatBuffer.baseAddress!, s0 = shift + ldb, s1 = s0 + ldb, sums = sumBuffer.baseAddress!
        if let stats {
          shift.update(from: stats.shift, count: N)
          (shift + N).update(repeating: 0, count: ldb - N)
          sums.update(repeating: 0, count: 2 * ldb)
        }
        var r0 = rows.lowerBound
        while r0 < rows.upperBound {
          // Blocks of rowKernelBlockPixels rows: float sums per block, folded into doubles after it.
          let r1 = min(r0 + rowKernelBlockPixels, rows.upperBound)
          if withStats { s0.update(repeating: 0, count: 2 * ldb) }
          var r = r0
          // Tile by tile along the rows, all column blocks of a tile before the next: c is written
          // in order, whole rows at a time.
          while r < r1 {
            let tall = r + gemmTileRows <= r1
            var col = 0
            while col < N {
              let width = min(lanes, N - col)
              let bc = b + col
              let sh = withStats ? vload(shift + col) : GemmVector()
              var t0 = GemmVector(), t1 = GemmVector()
              @inline(__always) func emit(_ v: GemmVector, row: Int) {
                if width == lanes { vstore(v, c + row * N + col) } else { storePartial(v, c + row * N + col, width) }
                if withStats {
                  let d = v - sh
                  t0 += d
                  t1 = t1.addingProduct(d, d)
                }
              }
              if tall {
                let p0 = a + r * K, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K
                let p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
                var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
                var bp = bc
                for i in 0..<K {
                  let bv = vload(bp)
                  c0 = c0.addingProduct(splat(p0[i]), bv)
                  c1 = c1.addingProduct(splat(p1[i]), bv)
                  c2 = c2.addingProduct(splat(p2[i]), bv)
                  c3 = c3.addingProduct(splat(p3[i]), bv)
                  c4 = c4.addingProduct(splat(p4[i]), bv)
                  c5 = c5.addingProduct(splat(p5[i]), bv)
                  c6 = c6.addingProduct(splat(p6[i]), bv)
                  c7 = c7.addingProduct(splat(p7[i]), bv)
                  bp += ldb
                }
                emit(c0, row: r); emit(c1, row: r + 1); emit(c2, row: r + 2); emit(c3, row: r + 3)
                emit(c4, row: r + 4); emit(c5, row: r + 5); emit(c6, row: r + 6); emit(c7, row: r + 7)
              } else {
                for row in r..<r1 {
                  let p0 = a + row * K
                  var c0 = GemmVector()
                  var bp = bc
                  for i in 0..<K {
                    c0 = c0.addingProduct(splat(p0[i]), vload(bp))
                    bp += ldb
                  }
                  emit(c0, row: row)
                }
              }
              if withStats {
                vstore(vload(s0 + col) + t0, s0 + col)
                vstore(vload(s1 + col) + t1, s1 + col)
              }
              col += lanes
            }
            r = tall ? r + gemmTileRows : r1
          }
          if withStats {
            for j in 0..<N {
              sums[j] += Double(s0[j])
              sums[ldb + j] += Double(s1[j])
            }
          }
          r0 = r1
        }
        if let stats {
          for j in 0..<N {
            stats.sums[j] += sums[j]
            stats.sums[N + j] += sums[ldb + j]
          }
        }
      }
    }
  }

  public static func gemmTransposedA(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                     k K: Int, n N: Int, rows: Range<Int>) {
    let end = rows.upperBound * N  // b's floats this call may read
    var r0 = rows.lowerBound
    while r0 < rows.upperBound {
      let r1 = min(r0 + gemmReductionBlockRows, rows.upperBound)
      var col = 0
      while col < N {
        let width = min(lanes, N - col)
        // A whole-vector load of b's row r at col reads up to r·N + col + lanes − 1: rows past
        // `safe` would run off the end of b and are read lane by lane (at most a vector's worth).
        let limit = end - col - lanes
        let safe = limit < 0 ? r0 : max(r0, min(r1, limit / N + 1))
        @inline(__always) func loadB(_ r: Int) -> GemmVector {
          r < safe ? vload(b + r * N + col) : loadPartial(b + r * N + col, width)
        }
        @inline(__always) func fold(_ v: GemmVector, _ i: Int) {
          let p = c + i * N + col
          if width == lanes { vstore(vload(p) + v, p) } else { storePartial(loadPartial(p, width) + v, p, width) }
        }
        var i = 0
        while i + 8 <= K {
          var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
          for r in r0..<r1 {
            let bv = loadB(r)
            let ar = a + r * K + i
            c0 = c0.addingProduct(splat(ar[0]), bv)
            c1 = c1.addingProduct(splat(ar[1]), bv)
            c2 = c2.addingProduct(splat(ar[2]), bv)
            c3 = c3.addingProduct(splat(ar[3]), bv)
            c4 = c4.addingProduct(splat(ar[4]), bv)
            c5 = c5.addingProduct(splat(ar[5]), bv)
            c6 = c6.addingProduct(splat(ar[6]), bv)
            c7 = c7.addingProduct(splat(ar[7]), bv)
          }
          fold(c0, i); fold(c1, i + 1); fold(c2, i + 2); fold(c3, i + 3)
          fold(c4, i + 4); fold(c5, i + 5); fold(c6, i + 6); fold(c7, i + 7)
          i += 8
        }
        while i < K {
          var c0 = GemmVector()
          for r in r0..<r1 { c0 = c0.addingProduct(splat(a[r * K + i]), loadB(r)) }
          fold(c0, i)
          i += 1
        }
        col += lanes
      }
      r0 = r1
    }
  }
}
