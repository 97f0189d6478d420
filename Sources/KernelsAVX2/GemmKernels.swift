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
/// (On AVX-512 a first half of 8 goes in one store: 8-channel layers are common in the 0.35 models.)
@inline(__always) private func storePartial(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
  var j = 0
  #if KERNELS_AVX512
  if count >= 8 {
    UnsafeMutableRawPointer(p).storeBytes(of: v.lowHalf, as: SIMD8<Float>.self)
    j = 8
  }
  #endif
  while j < count { p[j] = v[j]; j += 1 }
}
/// `count` floats from p, the other lanes 0 (loads that would run past the end of a buffer).
@inline(__always) private func loadPartial(_ p: UnsafePointer<Float>, _ count: Int) -> GemmVector {
  var v = GemmVector()
  var j = 0
  #if KERNELS_AVX512
  if count >= 8 {
    v.lowHalf = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    j = 8
  }
  #endif
  while j < count { v[j] = p[j]; j += 1 }
  return v
}
@inline(__always) private func splat(_ x: Float) -> GemmVector { GemmVector(repeating: x) }

/// Rows of A per forward register tile: 8 independent accumulator chains hide the FMA latency
/// (4 cycles, 1 zmm or 2 ymm FMAs per cycle on Zen 4).
private let gemmTileRows = 8
/// Rows of the weight-gradient reduction per block: A and B blocks (≤ 128·192 floats each) stay
/// in L2 while every (K, N) register tile sweeps them.
private let gemmReductionBlockRows = 128
#if KERNELS_AVX512
/// Tiles two vectors wide where the columns allow: 16 accumulators, half the broadcasts per FMA.
/// AVX-512 has the 32 registers for it; AVX2's 16 would spill.
private let gemmPairTiles = true
#else
private let gemmPairTiles = false
#endif

/// The forward tile: acc[j][v] = Σ_i a[row j, i] · b[i, v-th vector] for 8 rows of a (stride k)
/// and 1 or 2 vectors of b (stride ldb), handed to `emit(vector, row offset, vector index)`.
@inline(__always)
private func productTile8(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, ldb: Int, pair: Bool,
                          _ emit: (GemmVector, Int, Int) -> Void) {
  let p0 = a, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K, p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
  var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var bp = b
  if pair {
    var d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0
    for i in 0..<K {
      let bv = vload(bp), bw = vload(bp + lanes)
      var x = splat(p0[i]); c0 = c0.addingProduct(x, bv); d0 = d0.addingProduct(x, bw)
      x = splat(p1[i]); c1 = c1.addingProduct(x, bv); d1 = d1.addingProduct(x, bw)
      x = splat(p2[i]); c2 = c2.addingProduct(x, bv); d2 = d2.addingProduct(x, bw)
      x = splat(p3[i]); c3 = c3.addingProduct(x, bv); d3 = d3.addingProduct(x, bw)
      x = splat(p4[i]); c4 = c4.addingProduct(x, bv); d4 = d4.addingProduct(x, bw)
      x = splat(p5[i]); c5 = c5.addingProduct(x, bv); d5 = d5.addingProduct(x, bw)
      x = splat(p6[i]); c6 = c6.addingProduct(x, bv); d6 = d6.addingProduct(x, bw)
      x = splat(p7[i]); c7 = c7.addingProduct(x, bv); d7 = d7.addingProduct(x, bw)
      bp += ldb
    }
    emit(d0, 0, 1); emit(d1, 1, 1); emit(d2, 2, 1); emit(d3, 3, 1)
    emit(d4, 4, 1); emit(d5, 5, 1); emit(d6, 6, 1); emit(d7, 7, 1)
  } else {
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
  }
  emit(c0, 0, 0); emit(c1, 1, 0); emit(c2, 2, 0); emit(c3, 3, 0)
  emit(c4, 4, 0); emit(c5, 5, 0); emit(c6, 6, 0); emit(c7, 7, 0)
}

/// The weight-gradient tile: acc[j][v] = Σ_rows a[r, j] · b[r, v-th vector] for 8 columns of a
/// (a row stride k) and 1 or 2 vectors of b (row stride n), over `count` rows, added by `fold(vector, j, v)`.
/// `loadB(p, v)` reads a vector of b (whole, or lane by lane at the end of b).
@inline(__always)
private func reductionTile8(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, n N: Int, count: Int,
                            pair: Bool, _ loadB: (UnsafePointer<Float>, Int) -> GemmVector,
                            _ fold: (GemmVector, Int, Int) -> Void) {
  var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var ap = a, bp = b
  if pair {
    var d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0
    for _ in 0..<count {
      let bv = loadB(bp, 0), bw = loadB(bp + lanes, 1)
      var x = splat(ap[0]); c0 = c0.addingProduct(x, bv); d0 = d0.addingProduct(x, bw)
      x = splat(ap[1]); c1 = c1.addingProduct(x, bv); d1 = d1.addingProduct(x, bw)
      x = splat(ap[2]); c2 = c2.addingProduct(x, bv); d2 = d2.addingProduct(x, bw)
      x = splat(ap[3]); c3 = c3.addingProduct(x, bv); d3 = d3.addingProduct(x, bw)
      x = splat(ap[4]); c4 = c4.addingProduct(x, bv); d4 = d4.addingProduct(x, bw)
      x = splat(ap[5]); c5 = c5.addingProduct(x, bv); d5 = d5.addingProduct(x, bw)
      x = splat(ap[6]); c6 = c6.addingProduct(x, bv); d6 = d6.addingProduct(x, bw)
      x = splat(ap[7]); c7 = c7.addingProduct(x, bv); d7 = d7.addingProduct(x, bw)
      ap += K; bp += N
    }
    fold(d0, 0, 1); fold(d1, 1, 1); fold(d2, 2, 1); fold(d3, 3, 1)
    fold(d4, 4, 1); fold(d5, 5, 1); fold(d6, 6, 1); fold(d7, 7, 1)
  } else {
    for _ in 0..<count {
      let bv = loadB(bp, 0)
      c0 = c0.addingProduct(splat(ap[0]), bv)
      c1 = c1.addingProduct(splat(ap[1]), bv)
      c2 = c2.addingProduct(splat(ap[2]), bv)
      c3 = c3.addingProduct(splat(ap[3]), bv)
      c4 = c4.addingProduct(splat(ap[4]), bv)
      c5 = c5.addingProduct(splat(ap[5]), bv)
      c6 = c6.addingProduct(splat(ap[6]), bv)
      c7 = c7.addingProduct(splat(ap[7]), bv)
      ap += K; bp += N
    }
  }
  fold(c0, 0, 0); fold(c1, 1, 0); fold(c2, 2, 0); fold(c3, 3, 0)
  fold(c4, 4, 0); fold(c5, 5, 0); fold(c6, 6, 0); fold(c7, 7, 0)
}

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
              let pair = gemmPairTiles && tall && col + 2 * lanes <= N
              let width = min(lanes, N - col)
              let sh0 = withStats ? vload(shift + col) : GemmVector()
              let sh1 = withStats && pair ? vload(shift + col + lanes) : GemmVector()
              var t0 = GemmVector(), t1 = GemmVector(), u0 = GemmVector(), u1 = GemmVector()
              /// Stores vector v of row r + j; its statistics into t (first vector) or u (second).
              @inline(__always) func emit(_ value: GemmVector, _ j: Int, _ v: Int) {
                let p = c + (r + j) * N + col + v * lanes
                if v == 1 || width == lanes { vstore(value, p) } else { storePartial(value, p, width) }
                if withStats {
                  if v == 0 {
                    let d = value - sh0
                    t0 += d
                    t1 = t1.addingProduct(d, d)
                  } else {
                    let d = value - sh1
                    u0 += d
                    u1 = u1.addingProduct(d, d)
                  }
                }
              }
              if tall {
                productTile8(a + r * K, k: K, b + col, ldb: ldb, pair: pair, emit)
              } else {
                for row in r..<r1 {
                  let p0 = a + row * K
                  var c0 = GemmVector()
                  var bp = b + col
                  for i in 0..<K {
                    c0 = c0.addingProduct(splat(p0[i]), vload(bp))
                    bp += ldb
                  }
                  emit(c0, row - r, 0)
                }
              }
              if withStats {
                vstore(vload(s0 + col) + t0, s0 + col)
                vstore(vload(s1 + col) + t1, s1 + col)
                if pair {
                  vstore(vload(s0 + col + lanes) + u0, s0 + col + lanes)
                  vstore(vload(s1 + col + lanes) + u1, s1 + col + lanes)
                }
              }
              col += pair ? 2 * lanes : lanes
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
        let pair = gemmPairTiles && col + 2 * lanes <= N
        let width = min(lanes, N - col)
        // A whole-vector load of b's row r at col reads up to r·N + col + lanes − 1: past the row
        // only in the last, narrower block, and past the end of b only for the last row or two
        // there, from `safe` on, which are read lane by lane.
        let limit = end - col - lanes
        let safe = width == lanes ? r1 : limit < 0 ? r0 : max(r0, min(r1, limit / N + 1))
        @inline(__always) func fold(_ v: GemmVector, _ i: Int, _ u: Int) {
          let p = c + i * N + col + u * lanes
          if u == 1 || width == lanes { vstore(vload(p) + v, p) } else { storePartial(loadPartial(p, width) + v, p, width) }
        }
        @inline(__always) func whole(_ p: UnsafePointer<Float>, _ u: Int) -> GemmVector { vload(p) }
        @inline(__always) func partial(_ p: UnsafePointer<Float>, _ u: Int) -> GemmVector { loadPartial(p, width) }
        var i = 0
        while i + 8 <= K {
          @inline(__always) func foldAt(_ v: GemmVector, _ j: Int, _ u: Int) { fold(v, i + j, u) }
          reductionTile8(a + r0 * K + i, k: K, b + r0 * N + col, n: N, count: safe - r0, pair: pair, whole, foldAt)
          if safe < r1 {  // only in a block narrower than a vector, so never a pair
            reductionTile8(a + safe * K + i, k: K, b + safe * N + col, n: N, count: r1 - safe, pair: false, partial, foldAt)
          }
          i += 8
        }
        while i < K {
          for u in 0..<(pair ? 2 : 1) {
            var c0 = GemmVector()
            for r in r0..<r1 {
              let p = b + r * N + col + u * lanes
              c0 = c0.addingProduct(splat(a[r * K + i]), r < safe ? vload(p) : loadPartial(p, width))
            }
            fold(c0, i, u)
          }
          i += 1
        }
        col += pair ? 2 * lanes : lanes
      }
      r0 = r1
    }
  }
}
