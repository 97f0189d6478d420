// Our GEMM row kernels (KernelsAVX2/GemmKernels.swift, used by Pointwise.swift for the skinny 1×1
// shapes) and OpenBLAS, each forced for every shape through GemmChoice, against the naive double
// loops: every tail of the 8-row tile, the 8-row K tile and the 16/8-column vectors, on every
// instruction set this CPU runs.
import KernelRows
import Kernels
import XCTest

final class GemmKernelsTests: XCTestCase {
  override func tearDown() {
    GemmChoice.forced = nil
    Compute.setThreads(1)
  }

  let tailRows = [1, 3, 17, 100]
  let tailK = [1, 3, 16, 24, 32, 40]
  let tailN = [1, 8, 15, 16, 17, 24, 96, 144]

  func forEachImplementation(_ body: (String) -> Void) {
    forEachInstructionSet { isa in
      for impl in GemmImplementation.allCases {
        GemmChoice.forced = impl
        body("\(isa) \(impl)")
      }
    }
    GemmChoice.forced = nil
  }

  /// Forward without and with the fused statistics; the statistics also against the separate
  /// `batchNormStatistics` pass (channelStatistics) over the same output.
  func checkForward(m: Int, ci: Int, co: Int, scratch: Scratch, _ label: String) {
    let x = randomBuffer(m * ci, seed: 1, offset: 0.5), w = randomBuffer(ci * co, seed: 2)
    let y = FloatBuffer(count: m * co), yStats = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co)
    pointwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
    pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
    let what = "\(label) 1x1 \(m)x\(ci)x\(co)"
    assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what + " forward")
    let shift = FloatBuffer(count: co)
    var sums = [Double](repeating: .nan, count: 2 * co)
    pointwiseForward(y: yStats.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                     statisticsShift: shift.base, sums: &sums, scratch: scratch)
    assertClose(yStats, yRef, atol: 1e-4, rtol: 1e-4, what + " forward with statistics")
    assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: m, channels: co, what + " statistics")
    let passShift = FloatBuffer(count: co)
    var passSums = [Double](repeating: .nan, count: 2 * co)
    batchNormStatistics(z: yStats.base, rows: m, channels: co, shift: passShift.base, sums: &passSums, scratch: scratch)
    for c in 0..<co {
      // Means and variances from both (their shifts differ: row 0 computed apart vs read from y).
      let (a0, b0) = (sums[c] / Double(m), passSums[c] / Double(m))
      XCTAssertEqual(a0 + Double(shift[c]), b0 + Double(passShift[c]), accuracy: 1e-5 + 1e-5 * abs(b0 + Double(passShift[c])),
                     "\(what) mean[\(c)] vs statistics pass")
      let (va, vb) = (sums[co + c] / Double(m) - a0 * a0, passSums[co + c] / Double(m) - b0 * b0)
      XCTAssertEqual(va, vb, accuracy: 1e-5 + 1e-5 * vb, "\(what) variance[\(c)] vs statistics pass")
    }
  }

  /// dw and dx, unfused and with the fused BN reductions of the layer that produced x.
  func checkBackward(m: Int, ci: Int, co: Int, scratch: Scratch, _ label: String) {
    let x = randomBuffer(m * ci, seed: 3), w = randomBuffer(ci * co, seed: 4), dy = randomBuffer(m * co, seed: 5)
    let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
    let dw = randomBuffer(ci * co, seed: 6), dwRef = FloatBuffer(count: ci * co)
    dwRef.copy(from: dw.array)
    let dwFused = FloatBuffer(count: ci * co), dxFused = FloatBuffer(count: m * ci)
    dwFused.copy(from: dw.array)
    pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, rows: m,
                           inChannels: ci, outChannels: co)
    pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                      outChannels: co, scratch: scratch)
    let what = "\(label) 1x1 \(m)x\(ci)x\(co)"
    assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, what + " dx")
    assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
    let producer = FusedKernelsTests.Layer(rows: m, channels: ci, relu6: true, seed: 7)
    var sums = [Double](repeating: .nan, count: 2 * ci)
    sums.withUnsafeMutableBufferPointer { sp in
      pointwiseBackward(dx: dxFused.base, dw: dwFused.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                        outChannels: co, scratch: scratch, residual: nil, reduce: producer.reduction(sp.baseAddress!))
    }
    assertClose(dxFused, dxRef, atol: 1e-4, rtol: 1e-4, what + " fused dx")
    assertClose(dwFused, dwRef, atol: 1e-3, rtol: 1e-4, what + " fused dw")
    let expected = producer.naiveSums(da: dxRef.base)
    for i in 0..<(2 * ci) {
      XCTAssertEqual(sums[i], expected[i], accuracy: 1e-3 + 1e-4 * abs(expected[i]), "\(what) reduction[\(i)]")
    }
  }

  /// One scratch for all shapes, full of NaN first: padding and partials must never read stale contents.
  func nanScratch() -> Scratch {
    let scratch = Scratch()
    scratch.uninitialized(1 << 20).update(repeating: .nan, count: 1 << 20)
    return scratch
  }

  func testForwardMatchesNaiveOnEveryTail() {
    let scratch = nanScratch()
    forEachImplementation { label in
      for m in tailRows { for k in tailK { for n in tailN { checkForward(m: m, ci: k, co: n, scratch: scratch, label) } } }
    }
  }

  /// k and n swap roles in dx = dy·wᵀ, so the grid covers the tails of both products.
  func testBackwardMatchesNaiveOnEveryTail() {
    let scratch = nanScratch()
    forEachImplementation { label in
      for m in tailRows { for k in tailK { for n in tailN { checkBackward(m: m, ci: k, co: n, scratch: scratch, label) } } }
    }
  }

  /// Rows split over 2 and 3 threads (uneven chunks, weight-gradient partials), several
  /// statistics blocks per chunk.
  func testThreadedSplitsMatchNaive() {
    let scratch = nanScratch()
    for threads in [2, 3] {
      Compute.setThreads(threads)
      forEachImplementation { label in
        // 300×231: a w of 2^16 elements or more, whose transposed packing for dx is split over the threads.
        for (m, ci, co) in [(1001, 24, 144), (517, 32, 16), (700, 144, 24), (389, 17, 40), (130, 300, 231)] {
          checkForward(m: m, ci: ci, co: co, scratch: scratch, "\(label) threads \(threads)")
          checkBackward(m: m, ci: ci, co: co, scratch: scratch, "\(label) threads \(threads)")
        }
      }
    }
  }

  /// The transposed weight gradient (`TransposedWeightGradient`: n not whole vectors, m whole) against
  /// the direct one, dw starting at zero, through the blocked backward and the row-split GEMM, 1 and 2
  /// threads: the same products in the same order, so equal but for a chain the direct kernel splits
  /// at the end of dy (its partial last vector), which moves a sum by float rounding at most.
  func testTransposedWeightGradientMatchesTheDirectOne() {
    let saved = TransposedWeightGradient.enabled
    defer { TransposedWeightGradient.enabled = saved }
    GemmChoice.forced = .own
    forEachInstructionSet { isa in
      let lanes = KernelISA.rows.gemmColumnPadding
      TransposedWeightGradient.enabled = true
      if isa == .avx512 {
        for (m, n, expected) in [(144, 24, true), (96, 24, true), (48, 8, true), (24, 144, false), (144, 32, false),
                                 (16, 16, false), (8, 24, false), (1280, 1001, false), (1280, 10, true)] {
          XCTAssertEqual(TransposedWeightGradient.use(m: m, n: n), expected, "\(isa) dw \(m)x\(n)")
        }
      }
      var transposedShapes = 0
      for threads in [1, 2] {
        Compute.setThreads(threads)
        // (400, 40, 12): the narrow shape of AVX2's 8-lane vectors.
        for (rows, ci, co) in [(700, 144, 24), (517, 32, 8), (1001, 48, 24), (300, 64, 17), (400, 40, 12)] {
          TransposedWeightGradient.enabled = true
          let transposed = TransposedWeightGradient.use(m: ci, n: co)
          XCTAssertEqual(transposed, co < 2 * lanes && co % lanes != 0 && ci % lanes == 0, "\(isa) \(ci)x\(co)")
          if transposed { transposedShapes += 1 }
          let x = randomBuffer(rows * ci, seed: 31), dy = randomBuffer(rows * co, seed: 32), w = randomBuffer(ci * co, seed: 33)
          func gradients() -> (blocked: [Float], rowSplit: [Float]) {
            let dw = FloatBuffer(count: ci * co), dx = FloatBuffer(count: rows * ci), dw2 = FloatBuffer(count: ci * co)
            pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, rows: rows, inChannels: ci,
                              outChannels: co, scratch: Scratch())
            pointwiseWeightGradient(dw: dw2.base, dy: dy.base, x: x.base, rows: rows, inChannels: ci, outChannels: co,
                                    scratch: Scratch())
            return (dw.array, dw2.array)
          }
          let on = gradients()
          TransposedWeightGradient.enabled = false
          XCTAssertFalse(TransposedWeightGradient.use(m: ci, n: co))
          let off = gradients()
          let scale = off.blocked.map(abs).max()!
          for (a, b, what) in [(on.blocked, off.blocked, "blocked"), (on.rowSplit, off.rowSplit, "row split")] {
            let worst = zip(a, b).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-6 * scale, "\(isa) threads \(threads) \(rows)x\(ci)x\(co) \(what)")
          }
        }
      }
      XCTAssertGreaterThan(transposedShapes, 0, "\(isa): no shape took the transposed path")
    }
  }

  /// `gemmOfCachedRows` (on AVX-512, 24 columns in row pairs of three vectors) gives bit for bit what
  /// `gemm` gives: ranges starting at even and odd rows, every tail of its 8-row tile, k from 1 to 150;
  /// rows outside the range stay untouched. Other widths pass straight through.
  func testCachedRowPairsAreBitIdenticalToGemm() {
    forEachInstructionSet { isa in
      let kernels = KernelISA.rows
      let pad = kernels.gemmColumnPadding
      for n in [24, 16, 40] {
        let ldb = (n + pad - 1) / pad * pad
        for k in [1, 3, 24, 144, 150] {
          let w = randomBuffer(k * n, seed: 32)
          let packed = FloatBuffer(count: k * ldb)
          for i in 0..<k { for j in 0..<ldb { packed[i * ldb + j] = j < n ? w[i * n + j] : 0 } }
          for (lo, count) in [(0, 8), (3, 17), (5, 40), (0, 1), (8, 7), (2, 203)] {
            let total = lo + count + 3
            let a = randomBuffer(total * k, seed: 31)
            let viaPairs = FloatBuffer(count: total * n), viaGemm = FloatBuffer(count: total * n)
            viaPairs.base.update(repeating: .nan, count: total * n)
            viaGemm.base.update(repeating: .nan, count: total * n)
            kernels.gemmOfCachedRows(c: viaPairs.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n,
                                     rows: lo..<(lo + count), prefetch: nil)
            kernels.gemm(c: viaGemm.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n, rows: lo..<(lo + count),
                         stats: nil, prefetch: nil, stream: false)
            let first = (0..<(total * n)).first { viaPairs[$0].bitPattern != viaGemm[$0].bitPattern }
            XCTAssertNil(first, "\(isa) n=\(n) k=\(k) rows \(lo)..<\(lo + count): differs at \(first ?? -1)")
            XCTAssertTrue(viaPairs[lo * n].isFinite && viaPairs[(lo + count) * n - 1].isFinite, "\(isa) rows not written")
          }
        }
      }
    }
  }

  /// The weight-gradient kernel against its definition, bit for bit: within a block of rows (up to
  /// 128, one block here) each c element is one chain of fused multiply-adds over the rows in order,
  /// then added to c. Widths of whole vectors (single and paired column tiles), k with and without a
  /// tail of the 8-column tile, ranges not starting at row 0. (Widths that end in a partial vector, 8,
  /// 24 or 40 on AVX-512, split the chain where b's last rows are read lane by lane, so they round
  /// differently and are left to the tolerance tests.)
  func testWeightGradientKernelIsItsFMAChainBitForBit() {
    forEachInstructionSet { isa in
      for n in [16, 32, 48] {
        for k in [8, 16, 24, 27, 144] {
          for (lo, count) in [(0, 128), (3, 17), (5, 1), (2, 100)] {
            let total = lo + count + 2
            let a = randomBuffer(total * k, seed: 41), b = randomBuffer(total * n, seed: 42)
            let c = randomBuffer(k * n, seed: 43), ref = FloatBuffer(count: k * n)
            ref.copy(from: c.array)
            for i in 0..<k {
              for j in 0..<n {
                var acc: Float = 0
                for r in lo..<(lo + count) { acc = acc.addingProduct(a[r * k + i], b[r * n + j]) }
                ref[i * n + j] += acc
              }
            }
            KernelISA.rows.gemmTransposedA(c: c.base, a: a.base, b: b.base, k: k, n: n, rows: lo..<(lo + count), prefetch: nil)
            let first = (0..<(k * n)).first { c[$0].bitPattern != ref[$0].bitPattern }
            XCTAssertNil(first, "\(isa) k=\(k) n=\(n) rows \(lo)..<\(lo + count): differs at \(first ?? -1)"
                         + (first.map { ": \(c[$0]) vs \(ref[$0])" } ?? ""))
          }
        }
      }
    }
  }

  /// The column-panel loop order (`GemmPanels`, for a b larger than L2 can keep) computes every
  /// output and statistic as the same sum in the same order as the row-tile order: with the threshold
  /// at 0 (every shape panel by panel) the forward, its statistics, the input gradient and the fused
  /// backward are bit-identical to the default order on every tail, and match the naive loops on a
  /// shape past the real threshold (a 520x136 b, packed 0.28–0.30 MiB; 264x304 packed wᵀ in dx).
  /// Outputs are compared as bit patterns, the statistics as the doubles themselves.
  func testColumnPanelOrderIsBitIdenticalToRowOrder() {
    let scratch = nanScratch()
    let saved = GemmPanels.minimumBytes
    defer { GemmPanels.minimumBytes = saved; GemmChoice.forced = nil }
    func outputs(m: Int, ci: Int, co: Int) -> [[UInt64]] {
      let x = randomBuffer(m * ci, seed: 11, offset: 0.5), w = randomBuffer(ci * co, seed: 12), dy = randomBuffer(m * co, seed: 13)
      let y = FloatBuffer(count: m * co), shift = FloatBuffer(count: co), dx = FloatBuffer(count: m * ci)
      let dw = FloatBuffer(count: ci * co)
      var sums = [Double](repeating: .nan, count: 2 * co)
      pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                       statisticsShift: shift.base, sums: &sums, scratch: scratch)
      let plain = FloatBuffer(count: m * co)
      pointwiseForward(y: plain.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                        outChannels: co, scratch: scratch)
      func bits(_ b: FloatBuffer) -> [UInt64] { b.array.map { UInt64($0.bitPattern) } }
      return [bits(y), bits(plain), sums.map(\.bitPattern), bits(dx), bits(dw)]
    }
    GemmChoice.forced = .own
    forEachInstructionSet { isa in
      for (m, k, n) in [(100, 40, 144), (17, 24, 17), (3, 16, 96), (100, 3, 24), (37, 520, 136), (41, 304, 264)] {
        GemmPanels.minimumBytes = Int.max
        let rowOrder = outputs(m: m, ci: k, co: n)
        GemmPanels.minimumBytes = 0
        let panelOrder = outputs(m: m, ci: k, co: n)
        for (i, name) in ["forward with statistics", "forward", "statistics", "dx", "dw"].enumerated() {
          let (a, b) = (rowOrder[i], panelOrder[i])
          let first = a.indices.first { $0 >= b.count || a[$0] != b[$0] }
          XCTAssertTrue(a.count == b.count && first == nil,
                        "\(isa) \(m)x\(k)x\(n) \(name): panel order differs from row order at \(first ?? -1): \(first.map { "\(a[$0]) vs \(b[$0])" } ?? "")")
        }
      }
      GemmPanels.minimumBytes = saved
      checkForward(m: 37, ci: 520, co: 136, scratch: scratch, "\(isa) panels")
      checkBackward(m: 41, ci: 304, co: 264, scratch: scratch, "\(isa) panels")
    }
  }

  /// The pending-input forward activating A tile by tile inside the GEMM (`gemmActivatedInput`, one
  /// call per thread, each tile's rows made one tile ahead) gives bit for bit what activating blocks of
  /// rows into a buffer before each block's `gemm` gives: outputs and statistics (as doubles), with and
  /// without ReLU6, row and column-panel order, streamed or not, 1–3 threads, on every tail of the
  /// tiles (16-row tiles for n ≤ 16, 8 otherwise; k not a multiple of the vector too), on both
  /// instruction sets. The kernel itself on a row range not starting at 0 against `batchNormApply`
  /// + `gemm` on the same range: rows outside it stay untouched.
  func testActivatedInputTilesAreBitIdenticalToTheBlockPass() {
    let scratch = nanScratch()
    let (savedPanels, savedStream, savedTiles) = (GemmPanels.minimumBytes, StreamingStores.minimumBytes, ActivatedInputTiles.enabled)
    defer {
      GemmPanels.minimumBytes = savedPanels; StreamingStores.minimumBytes = savedStream
      ActivatedInputTiles.enabled = savedTiles; GemmChoice.forced = nil; Compute.setThreads(1)
    }
    func bits(_ b: FloatBuffer) -> [UInt32] { b.array.map(\.bitPattern) }
    GemmChoice.forced = .own
    forEachInstructionSet { isa in
      for (m, k, n) in [(1, 16, 24), (7, 48, 16), (33, 144, 24), (300, 96, 32), (301, 13, 40), (1000, 32, 16), (257, 64, 96)] {
        let z = randomBuffer(m * k, seed: 71, scale: 4, offset: 1)
        let ss = randomBuffer(2 * k, seed: 72, scale: 2, offset: 0.5)
        let w = randomBuffer(k * n, seed: 73)
        for relu6 in [true, false] {
          let pending = PendingBatchNorm(scale: ss.base, shift: ss.base + k, relu6: relu6)
          for (threads, panels, stream) in [(1, false, false), (2, false, true), (3, true, false), (2, true, true)] {
            Compute.setThreads(threads)
            GemmPanels.minimumBytes = panels ? 0 : Int.max
            StreamingStores.minimumBytes = stream ? 0 : Int.max
            var results: [[[UInt32]]] = []
            var statistics: [[UInt64]] = []
            for tiles in [false, true] {
              ActivatedInputTiles.enabled = tiles
              let y = FloatBuffer(count: m * n), yPlain = FloatBuffer(count: m * n), shift = FloatBuffer(count: n)
              y.copy(from: [Float](repeating: .nan, count: m * n)); yPlain.copy(from: [Float](repeating: .nan, count: m * n))
              var sums = [Double](repeating: .nan, count: 2 * n)
              pointwiseForward(y: y.base, x: z.base, w: w.base, rows: m, inChannels: k, outChannels: n,
                               statisticsShift: shift.base, sums: &sums, scratch: scratch, input: pending)
              pointwiseForward(y: yPlain.base, x: z.base, w: w.base, rows: m, inChannels: k, outChannels: n,
                               input: pending, scratch: scratch)
              results.append([bits(y), bits(yPlain), bits(shift)])
              statistics.append(sums.map(\.bitPattern))
            }
            let what = "\(isa) \(m)x\(k)x\(n) relu6=\(relu6) \(threads)t panels=\(panels) stream=\(stream)"
            for (i, name) in ["forward with statistics", "forward", "shift"].enumerated() {
              let (a, b) = (results[0][i], results[1][i])
              let first = a.indices.first { a[$0] != b[$0] }
              XCTAssertNil(first, "\(what) \(name): tiles differ from blocks at \(first ?? -1)")
            }
            XCTAssertEqual(statistics[0], statistics[1], "\(what) statistics")
          }
        }
        // The kernel alone on rows lo..<hi (absolute addressing of its tile buffers), panels both ways.
        let kernels = KernelISA.rows, lanes = kernels.gemmColumnPadding
        let ldb = (n + lanes - 1) / lanes * lanes
        let packed = FloatBuffer(count: k * ldb)
        for i in 0..<k { for j in 0..<ldb { packed[i * ldb + j] = j < n ? w[i * n + j] : 0 } }
        let (lo, hi) = (m / 3, m)
        for panels in [false, true] {
          GemmPanels.minimumBytes = panels ? 0 : Int.max
          let a = FloatBuffer(count: m * k)
          kernels.batchNormApply(a: a.base, z: z.base, scale: ss.base, shift: ss.base + k, channels: k, rows: lo..<hi,
                                 relu6: true, residual: nil)
          let c = FloatBuffer(count: m * n), cRef = FloatBuffer(count: m * n)
          c.copy(from: [Float](repeating: .nan, count: m * n)); cRef.copy(from: [Float](repeating: .nan, count: m * n))
          kernels.gemm(c: cRef.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n, rows: lo..<hi, stats: nil,
                       prefetch: nil, stream: false)
          kernels.gemmActivatedInput(c: c.base, a: z.base, scale: ss.base, shift: ss.base + k, relu6: true, b: packed.base,
                                     ldb: ldb, k: k, n: n, rows: lo..<hi, stats: nil, prefetch: nil, stream: false)
          XCTAssertEqual(bits(c), bits(cRef), "\(isa) \(m)x\(k)x\(n) rows \(lo)..<\(hi) panels=\(panels): kernel")
        }
      }
    }
  }

  /// With our AVX2 kernels the selection is the shape rule that docs/performance.md documents (round 8):
  /// ours for the narrow early layers and the small expands, OpenBLAS for the wide late layers and the
  /// big expands; GemmChoice.forced overrides it.
  func testSelectionFollowsTheMeasuredCrossover() {
    let host = GemmChoice.machine
    defer { GemmChoice.machine = host; GemmChoice.forced = nil }
    GemmChoice.forced = nil
    GemmChoice.machine = GemmMachine(blasCore: "Haswell", ownAVX512: false)
    let early = pointwiseGemmSelection(rows: 401408, inChannels: 32, outChannels: 16)
    XCTAssertEqual([early.forward, early.inputGradient, early.weightGradient], [.own, .own, .own])
    let bigExpand = pointwiseGemmSelection(rows: 401408, inChannels: 16, outChannels: 96)
    XCTAssertEqual([bigExpand.forward, bigExpand.inputGradient, bigExpand.weightGradient], [.blas, .own, .own])
    XCTAssertEqual(pointwiseGemmSelection(rows: 9216, inChannels: 16, outChannels: 96).forward, .own)
    let late = pointwiseGemmSelection(rows: 1568, inChannels: 960, outChannels: 320)
    XCTAssertEqual([late.forward, late.inputGradient, late.weightGradient], [.blas, .blas, .blas])
    GemmChoice.forced = .own
    XCTAssertEqual(pointwiseGemmSelection(rows: 1568, inChannels: 960, outChannels: 320).forward, .own)
    GemmChoice.forced = .blas
    XCTAssertEqual(pointwiseGemmSelection(rows: 401408, inChannels: 32, outChannels: 16).forward, .blas)
  }

  /// The fused expand forward runs our GEMM inside it, so it follows the selection of the plain
  /// product: with our AVX-512 kernels it takes the big expands whatever OpenBLAS core the CPU gets
  /// (Cooperlake on Zen 4), never under MNV2_GEMM=blas, and with AVX2 kernels it follows the shape rule.
  func testFusedExpandForwardTakesTheBigExpandsWithOurAVX512Kernels() {
    let (host, enabled) = (GemmChoice.machine, FusedExpandForward.enabled)
    defer { GemmChoice.machine = host; GemmChoice.forced = nil; FusedExpandForward.enabled = enabled }
    GemmChoice.forced = nil
    FusedExpandForward.enabled = true
    let (rows, k, n) = (401408, 16, 96)  // 1.0/224 b32 layer 3: z is 154 MB
    GemmChoice.machine = GemmMachine(blasCore: "Cooperlake", ownAVX512: true)
    XCTAssertTrue(FusedExpandForward.use(rows: rows, inChannels: k, outChannels: n))
    XCTAssertFalse(FusedExpandForward.use(rows: 100, inChannels: k, outChannels: n), "z below the size threshold")
    GemmChoice.forced = .blas
    XCTAssertFalse(FusedExpandForward.use(rows: rows, inChannels: k, outChannels: n), "MNV2_GEMM=blas")
    GemmChoice.forced = nil
    GemmChoice.machine = GemmMachine(blasCore: "Haswell", ownAVX512: false)
    XCTAssertFalse(FusedExpandForward.use(rows: rows, inChannels: k, outChannels: n), "AVX2 kernels: the shape rule")
  }

  /// Which expand layers take the fused forward and the scaled backward by shape, with our AVX-512
  /// kernels (round 20's thresholds): the fused forward from a 16 MiB z; the scaled backward from 64
  /// MiB, or from 16 MiB with at most 16 input channels.
  func testExpandPathThresholds() {
    let (host, fused, scaled) = (GemmChoice.machine, FusedExpandForward.enabled, ScaledExpandBackward.enabled)
    let fusedScaled = FusedScaledExpandBackward.enabled
    defer {
      GemmChoice.machine = host; GemmChoice.forced = nil
      FusedExpandForward.enabled = fused; ScaledExpandBackward.enabled = scaled
      FusedScaledExpandBackward.enabled = fusedScaled
    }
    GemmChoice.forced = nil
    GemmChoice.machine = GemmMachine(blasCore: "Cooperlake", ownAVX512: true)
    FusedExpandForward.enabled = true
    ScaledExpandBackward.enabled = true
    // scaled: with the scaled backward fused into the depthwise's (the default), and without.
    let cases: [(String, rows: Int, k: Int, n: Int, fused: Bool, scaled: Bool, scaledUnfused: Bool)] = [
      ("1.0/224 b32 layer 3, z 154 MB", 401408, 16, 96, true, true, true),
      ("1.0/224 b16 layer 3, z 77 MB", 200704, 16, 96, true, true, true),
      ("1.0/224 b32 layer 6, z 58 MB, k 24", 100352, 24, 144, true, false, false),
      ("1.0/224 b32 layer 12, z 19 MB, k 32", 25088, 32, 192, true, false, false),
      ("0.35/96 b64 layer 3, z 28 MB, k 8", 147456, 8, 48, true, true, true),
      ("0.35/96 b32 layer 3, z 14 MB", 73728, 8, 48, false, true, false),
      ("0.35/96 b64 layer 6, z 7 MB, k 8", 36864, 8, 48, false, true, false),
      ("0.35/96 b64 layer 12, z 3.5 MB, k 16", 9216, 16, 96, false, true, false),
      ("0.35/96 b64 layer 21, z 1.3 MB, k 24", 2304, 24, 144, false, false, false),
    ]
    for c in cases {
      XCTAssertEqual(FusedExpandForward.use(rows: c.rows, inChannels: c.k, outChannels: c.n), c.fused, "fused forward: \(c.0)")
      for fusedScaled in [true, false] {
        FusedScaledExpandBackward.enabled = fusedScaled
        XCTAssertEqual(ScaledExpandBackward.use(rows: c.rows, inChannels: c.k, outChannels: c.n),
                       fusedScaled ? c.scaled : c.scaledUnfused, "scaled backward (fused: \(fusedScaled)): \(c.0)")
      }
    }
  }

  /// Where our kernels run AVX-512, ours runs every shape, the late layers and the big expands too,
  /// whatever OpenBLAS's core (Haswell on Zen 5, Cooperlake on Zen 4: both measured behind); with our
  /// AVX2 kernels the shape rule stands.
  func testOurAVX512KernelsRunEveryShape() {
    let host = GemmChoice.machine
    defer { GemmChoice.machine = host; GemmChoice.forced = nil }
    GemmChoice.forced = nil
    for core in ["Haswell", "Cooperlake", "SkylakeX"] {
      GemmChoice.machine = GemmMachine(blasCore: core, ownAVX512: true)
      XCTAssertTrue(GemmChoice.machine.ownRunsEverything)
      for (rows, ci, co) in [(1568, 960, 320), (401408, 16, 96), (100352, 144, 24), (401408, 32, 16)] {
        let s = pointwiseGemmSelection(rows: rows, inChannels: ci, outChannels: co)
        XCTAssertEqual([s.forward, s.inputGradient, s.weightGradient], [.own, .own, .own], "\(core) \(rows)x\(ci)x\(co)")
      }
      XCTAssertTrue(GemmChoice.summary.contains("ours for every shape"), GemmChoice.summary)
    }
    let avx2 = GemmMachine(blasCore: "Haswell", ownAVX512: false)
    GemmChoice.machine = avx2
    XCTAssertFalse(avx2.ownRunsEverything)
    XCTAssertEqual(pointwiseGemmSelection(rows: 1568, inChannels: 960, outChannels: 320).forward, .blas)
    XCTAssertTrue(GemmChoice.summary.contains("per shape"), GemmChoice.summary)
  }

  /// The choice is a fact of the machine, not a timing: the same in every process, however busy the
  /// cores (a timed choice flipped under 4 ranks on 2 cores and changed a restarted job's weights).
  /// The host's OpenBLAS core is one the library names, and the ISA flag is the kernels' own.
  func testHostMachineIsReadFromTheLibraryAndTheKernels() {
    let a = GemmMachine.host, b = GemmMachine.host
    XCTAssertEqual(a, b)
    XCTAssertFalse(a.blasCore.isEmpty || a.blasCore == "unknown", "\(a)")
    XCTAssertEqual(a.ownAVX512, KernelISA.current == .avx512)
  }

  /// The kernels step their prefetch streams by exactly the vector FMAs they issue, rows × k ×
  /// ⌈n / lanes⌉ per product (what `pointwiseBackwardBlocks` makes the streams for): after a real
  /// `gemm` and `gemmTransposedA` run every line of every range has gone out, and not before the last
  /// FMAs (one FMA short leaves the last line). k not a multiple of the 8-column reduction tile is
  /// counted too. Results are bit-identical with and without the streams.
  func testKernelsStepTheirPrefetchStreamsByTheFMAsTheyIssue() {
    let region = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
    defer { region.deallocate() }
    forEachInstructionSet { isa in
      let kernels = KernelISA.rows, lanes = kernels.gemmColumnPadding
      for (rows, k, n) in [(300, 24, 40), (129, 16, 96), (77, 13, 24), (64, 144, 24)] {
        let a = randomBuffer(rows * k, seed: 31), bt = randomBuffer(rows * n, seed: 32), w = randomBuffer(k * n, seed: 33)
        let ldb = (n + lanes - 1) / lanes * lanes
        let packed = FloatBuffer(count: k * ldb)
        for i in 0..<k { for j in 0..<n { packed[i * ldb + j] = w[i * n + j] } }
        let fmas = rows * k * ((n + lanes - 1) / lanes)
        // Three ranges of different lengths: the largest sets the pace, all must end exhausted.
        let ranges = [(UnsafeRawPointer(region), 200_000), (UnsafeRawPointer(region + 300_000), 7_000),
                      (UnsafeRawPointer(region + 500_000), 64_000)]
        func exhausted(_ s: PrefetchStreams) -> Bool { s.s0 >= s.e0 && s.s1 >= s.e1 && s.s2 >= s.e2 }
        let what = "\(isa) \(rows)x\(k)x\(n)"

        let c = FloatBuffer(count: rows * n), cRef = FloatBuffer(count: rows * n)
        kernels.gemm(c: cRef.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n, rows: 0..<rows, stats: nil,
                     prefetch: nil, stream: false)
        var streams = PrefetchStreams(ranges[0], ranges[1], ranges[2], units: fmas)
        kernels.gemm(c: c.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n, rows: 0..<rows, stats: nil,
                     prefetch: &streams, stream: false)
        XCTAssertTrue(exhausted(streams), "\(what) gemm: streams left at \(streams.s0 - streams.e0) bytes")
        XCTAssertEqual(c.array.map(\.bitPattern), cRef.array.map(\.bitPattern), "\(what) gemm with prefetch")
        var short = PrefetchStreams(ranges[0], ranges[1], ranges[2], units: fmas + 1)
        kernels.gemm(c: c.base, a: a.base, b: packed.base, ldb: ldb, k: k, n: n, rows: 0..<rows, stats: nil,
                     prefetch: &short, stream: false)
        XCTAssertFalse(exhausted(short), "\(what) gemm: made for one FMA more, the last line is still due")

        let dw = FloatBuffer(count: k * n), dwRef = FloatBuffer(count: k * n)
        kernels.gemmTransposedA(c: dwRef.base, a: a.base, b: bt.base, k: k, n: n, rows: 0..<rows, prefetch: nil)
        var streamsT = PrefetchStreams(ranges[0], ranges[1], ranges[2], units: fmas)
        kernels.gemmTransposedA(c: dw.base, a: a.base, b: bt.base, k: k, n: n, rows: 0..<rows, prefetch: &streamsT)
        XCTAssertTrue(exhausted(streamsT), "\(what) gemmTransposedA: streams left at \(streamsT.s0 - streamsT.e0) bytes")
        XCTAssertEqual(dw.array.map(\.bitPattern), dwRef.array.map(\.bitPattern), "\(what) gemmTransposedA with prefetch")
      }
    }
  }

  /// PrefetchStreams paces its ranges over the FMAs it was made for: after u of its `units`, exactly
  /// ⌊u·lines/units⌋ lines of the largest range (and as many of each smaller one, up to its end) were
  /// issued, whatever the sizes of the steps; after all of them every line of every range, and the
  /// cursors stop at their ends; the same when the third range is fetched for writing.
  func testPrefetchStreamsPaceTheirRangesOverTheirUnits() {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 64)
    defer { buffer.deallocate() }
    let cases: [([Int], [Int])] = [([4000, 640, 64], [16, 16, 16, 8, 96, 96]), ([64 * 1000, 100, 3], Array(repeating: 16, count: 37)),
                                   ([10, 20, 30], Array(repeating: 8, count: 100)), ([5000, 0, 0], [24]), ([6400, 64, 64], [1, 1, 500, 1])]
    for (sizes, steps) in cases {
     for writesThird in [false, true] {
      let ranges = [(UnsafeRawPointer(buffer), sizes[0]), (UnsafeRawPointer(buffer + 20_000), sizes[1]),
                    (UnsafeRawPointer(buffer + 40_000), sizes[2])]
      let units = steps.reduce(0, +)
      var streams = PrefetchStreams(ranges[0], ranges[1], ranges[2], writesThird: writesThird, units: units)
      XCTAssertEqual(streams.writesThird, writesThird)
      let lines = sizes.map { ($0 + prefetchLine - 1) / prefetchLine }
      XCTAssertEqual(streams.lines, lines.max()!, "\(sizes)")
      var done = 0
      for u in steps {
        streams.step(u)
        done += u
        let due = done * lines.max()! / units
        let cursors = [streams.s0, streams.s1, streams.s2]
        for i in 0..<3 {
          XCTAssertEqual(cursors[i] - ranges[i].0, min(due, lines[i]) * prefetchLine, "\(sizes) after \(done) of \(units): range \(i)")
        }
      }
      streams.step(100)
      XCTAssertEqual(streams.s0 - ranges[0].0, lines[0] * prefetchLine, "no line past the end")
      XCTAssertEqual(streams.s2 - ranges[2].0, lines[2] * prefetchLine, "no line past the end (writes: \(writesThird))")
     }
    }
  }
}
