// Streaming (non-temporal) stores of large kernel outputs (Kernels/Streaming.swift): when they are
// used, and that they change nothing but how the bytes reach memory.
import Kernels
import XCTest

final class StreamingTests: XCTestCase {
  // The switches as the environment set them (MNV2_STREAM=0 must stay off for later tests).
  private var saved = (enabled: StreamingStores.enabled, minimumBytes: StreamingStores.minimumBytes)
  override func setUp() { saved = (StreamingStores.enabled, StreamingStores.minimumBytes) }
  override func tearDown() {
    (StreamingStores.enabled, StreamingStores.minimumBytes) = saved
    GemmChoice.forced = nil
    Compute.setThreads(1)
  }

  /// Large enough, 16-float rows, 64-byte aligned, and switched on: anything else stores normally (a
  /// misaligned streaming store would fault).
  func testStreamingIsChosenOnlyForLargeAlignedWholeVectorOutputs() {
    let buffer = FloatBuffer(count: 64)
    StreamingStores.enabled = true
    StreamingStores.minimumBytes = 1024
    XCTAssertTrue(StreamingStores.use(buffer.base, count: 256, channels: 32))
    XCTAssertFalse(StreamingStores.use(buffer.base, count: 255, channels: 32), "below the threshold")
    XCTAssertFalse(StreamingStores.use(buffer.base, count: 256, channels: 24), "rows not whole vectors")
    XCTAssertFalse(StreamingStores.use(buffer.base + 4, count: 256, channels: 32), "16-byte aligned only")
    StreamingStores.enabled = false
    XCTAssertFalse(StreamingStores.use(buffer.base, count: 256, channels: 32), "MNV2_STREAM=0")
  }

  /// Every kernel that streams (1×1 forward with and without a pending input, with and without
  /// statistics, its input gradient without reductions, the depthwise forward and input gradient at
  /// stride 1 and 2, the stem forward without statistics) writes the same bits with every output streamed (threshold 0) as with none, on two
  /// threads and every instruction set this CPU runs; so do the paths that decline to stream.
  func testKernelsWriteTheSameBitsWithStreamingStores() {
    Compute.setThreads(2)
    GemmChoice.forced = .own
    forEachInstructionSet { isa in
      let (m, ci, co) = (3000, 32, 96)
      let producer = FusedKernelsTests.Layer(rows: m, channels: ci, relu6: true, seed: 200)
      let layer = FusedKernelsTests.Layer(rows: m, channels: co, relu6: true, seed: 210)
      let pending = PendingBatchNorm(scale: producer.scaleShift.base, shift: producer.scaleShift.base + ci, relu6: true)
      let w = randomBuffer(ci * co, seed: 201), da = randomBuffer(m * co, seed: 202)
      let ds = DepthwiseShape(batch: 2, height: 30, width: 25, channels: 32, stride: 1)  // 1500 pixels of 32
      let ds2 = DepthwiseShape(batch: 2, height: 31, width: 24, channels: 32, stride: 2)
      let dwW = randomBuffer(ds.weightCount, seed: 203)
      let cs = ConvShape(batch: 2, height: 40, width: 40, inChannels: 3, outChannels: 32, kernel: 3, stride: 2)
      let image = randomBuffer(cs.inputCount, seed: 204), stemW = randomBuffer(cs.weightCount, seed: 205)
      func run(stream: Bool) -> [[Float]] {
        StreamingStores.enabled = stream
        StreamingStores.minimumBytes = 0
        let scratch = Scratch()
        let y = FloatBuffer(count: m * co), y2 = FloatBuffer(count: m * co), shift = FloatBuffer(count: co)
        var sums = [Double](repeating: .nan, count: 2 * co)
        pointwiseForward(y: y.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         statisticsShift: shift.base, sums: &sums, scratch: scratch, input: pending)
        pointwiseForward(y: y2.base, x: producer.a.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
        // The expand layers' training forward (stored input, statistics) and the project layers'
        // inference forward (pending input, no statistics).
        let y3 = FloatBuffer(count: m * co), shift3 = FloatBuffer(count: co), y4 = FloatBuffer(count: m * co)
        var sums3 = [Double](repeating: .nan, count: 2 * co)
        pointwiseForward(y: y3.base, x: producer.a.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         statisticsShift: shift3.base, sums: &sums3, scratch: scratch)
        pointwiseForward(y: y4.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         input: pending, scratch: scratch)
        let dx = FloatBuffer(count: m * ci), dw = FloatBuffer(count: ci * co)
        var gradSums = layer.naiveSums(da: da.base)
        let (dg, db) = (FloatBuffer(count: co), FloatBuffer(count: co))
        gradSums.withUnsafeMutableBufferPointer { gp in
          withBatchNormBackward(fromSums: UnsafePointer(gp.baseAddress!), da: da.base, layer.reduction(gp.baseAddress!),
                                dGamma: dg.base, dBeta: db.base, rows: m, channels: co, training: true) { outputGradient in
            pointwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: producer.z.base, w: w.base, rows: m,
                              inChannels: ci, outChannels: co, scratch: scratch, input: pending, outputGradient: outputGradient)
          }
        }
        let dy = FloatBuffer(count: ds.outputCount), dShift = FloatBuffer(count: ds.channels)
        var dSums = [Double](repeating: .nan, count: 2 * ds.channels)
        depthwiseForward(y: dy.base, x: producer.z.base, w: dwW.base, ds, statisticsShift: dShift.base, sums: &dSums,
                         scratch: scratch, input: pending)
        let ddx = FloatBuffer(count: ds.inputCount), ddw = FloatBuffer(count: ds.weightCount)
        depthwiseBackward(dx: ddx.base, dw: ddw.base, dy: dy.base, x: producer.a.base, w: dwW.base, ds, scratch: scratch)
        // Stride 2, inference (no statistics).
        let dy2 = FloatBuffer(count: ds2.outputCount)
        depthwiseForward(y: dy2.base, x: producer.z.base, w: dwW.base, ds2, input: pending, scratch: scratch)
        let ddx2 = FloatBuffer(count: ds2.inputCount), ddw2 = FloatBuffer(count: ds2.weightCount)
        depthwiseBackward(dx: ddx2.base, dw: ddw2.base, dy: dy2.base, x: producer.a.base, w: dwW.base, ds2, scratch: scratch)
        let stem = FloatBuffer(count: cs.outputCount), stemShift = FloatBuffer(count: cs.outChannels)
        var stemSums = [Double](repeating: .nan, count: 2 * cs.outChannels)
        conv2dForward(y: stem.base, x: image.base, w: stemW.base, cs, statisticsShift: stemShift.base, sums: &stemSums,
                      scratch: scratch)
        let stem2 = FloatBuffer(count: cs.outputCount)
        conv2dForward(y: stem2.base, x: image.base, w: stemW.base, cs, scratch: scratch)  // streams (no statistics)
        return [y.array, sums.map(Float.init), y2.array, dx.array, dw.array, dy.array, dSums.map(Float.init),
                ddx.array, ddw.array, stem.array, stemSums.map(Float.init), stem2.array,
                y3.array, sums3.map(Float.init), y4.array, dy2.array, ddx2.array, ddw2.array]
      }
      let plain = run(stream: false), streamed = run(stream: true)
      let names = ["1x1 y", "1x1 statistics", "1x1 y (stored input)", "1x1 dx", "1x1 dw", "depthwise y",
                   "depthwise statistics", "depthwise dx", "depthwise dw", "stem y", "stem statistics",
                   "stem y (inference)", "1x1 y (stored input, statistics)", "1x1 statistics (stored input)",
                   "1x1 y (pending input, inference)", "depthwise s2 y", "depthwise s2 dx", "depthwise s2 dw"]
      for (i, name) in names.enumerated() {
        XCTAssertEqual(streamed[i].map(\.bitPattern), plain[i].map(\.bitPattern), "\(isa) \(name)")
        XCTAssertFalse(plain[i].allSatisfy { $0 == 0 }, "\(isa) \(name) was written")
      }
    }
  }
}
