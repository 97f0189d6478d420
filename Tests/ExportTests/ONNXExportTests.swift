// The ONNX export: graph structure (NHWC input, explicit TF SAME pads, folded BN, outputs), and its
// numbers through a naive NCHW interpreter of the exported nodes against our own forward pass.
import Checkpoint
import Export
import Foundation
import Kernels
import MobileNet
import SwiftProtobuf
import XCTest

final class ONNXExportTests: XCTestCase {
  func testSamePadsMatchTensorFlow() {
    // TF SAME: total = max((ceil(in/s) − 1)·s + k − in, 0), the odd pixel after.
    XCTAssertTrue(ONNXExport.samePads(input: 32, kernel: 3, stride: 2) == (0, 1))
    XCTAssertTrue(ONNXExport.samePads(input: 33, kernel: 3, stride: 2) == (1, 1))
    XCTAssertTrue(ONNXExport.samePads(input: 7, kernel: 3, stride: 1) == (1, 1))
    XCTAssertTrue(ONNXExport.samePads(input: 4, kernel: 1, stride: 1) == (0, 0))
  }

  func testGraphStructureAndSerialisation() throws {
    let net = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 64), seed: 1)
    let m = ONNXExport.model(net)
    let back = try Onnx_ModelProto(serializedBytes: try m.serializedData())
    XCTAssertEqual(back.opsetImport.first?.version, ONNXExport.opset)
    let g = back.graph
    XCTAssertEqual(g.input.map(\.name), ["images"])
    XCTAssertEqual(g.input[0].type.tensorType.shape.dim.map { $0.dimParam.isEmpty ? "\($0.dimValue)" : $0.dimParam }, ["N", "64", "64", "3"])
    XCTAssertEqual(g.output.map(\.name), ["logits", "probabilities"])
    let convs = g.node.filter { $0.opType == "Conv" }
    XCTAssertEqual(convs.count, net.graph.layers.count + 1, "one Conv per conv+BN layer, plus the logits")
    XCTAssertFalse(g.node.contains { $0.opType == "BatchNormalization" }, "batch norm is folded")
    XCTAssertEqual(g.node.filter { $0.opType == "Add" }.count, net.graph.blocks.filter(\.residual).count)
    // Stride-2 layers on even inputs pad 0 before and 1 after; stride-1 3×3 layers 1 and 1.
    for (l, n) in zip(net.graph.layers, convs) {
      let pads = n.attribute.first { $0.name == "pads" }!.ints
      let strides = n.attribute.first { $0.name == "strides" }!.ints
      XCTAssertEqual(strides, [Int64(l.stride), Int64(l.stride)], l.scope)
      if l.kernel == 3 && l.stride == 2 { XCTAssertEqual(pads, [0, 0, 1, 1], l.scope) }
      if l.kernel == 3 && l.stride == 1 { XCTAssertEqual(pads, [1, 1, 1, 1], l.scope) }
      if l.kernel == 1 { XCTAssertEqual(pads, [0, 0, 0, 0], l.scope) }
      let group = n.attribute.first { $0.name == "group" }!.i
      if case .depthwise = l.kind { XCTAssertEqual(group, Int64(l.outChannels)) } else { XCTAssertEqual(group, 1) }
    }
  }

  /// Runs the exported graph with a naive interpreter (NCHW, double accumulation) and compares its
  /// logits with our forward pass in inference mode, on random BN statistics so the folding matters.
  func testExportedGraphComputesOurLogits() throws {
    let net = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 5, imageSize: 32), seed: 4)
    var rng = RandomState(seed: 5)
    for i in 0..<net.stateValues.count { net.stateValues[i] = 0.5 + Float(rng.uniform()) }
    for spec in net.trainable.specs where spec.role == .gamma || spec.role == .beta {
      for i in 0..<spec.count { net.parameters[spec.offset + i] = Float(rng.uniform()) * 0.5 + (spec.role == .gamma ? 0.75 : -0.25) }
    }
    let size = 32, batch = 2
    let input = net.inputBuffer(batch: batch)
    for i in 0..<(batch * size * size * 3) { input[i] = Float(rng.uniform()) * 2 - 1 }
    let nhwc = Array(UnsafeBufferPointer(start: input, count: batch * size * size * 3))
    let z = net.forward(batch: batch, mode: .inference, rng: &rng)
    let ours = Array(UnsafeBufferPointer(start: z, count: batch * 5))
    let theirs = try NaiveONNX.run(ONNXExport.model(net), input: nhwc, shape: [batch, size, size, 3], output: "logits")
    let scale = ours.map(abs).max()!
    for i in 0..<ours.count { XCTAssertEqual(theirs[i], ours[i], accuracy: 1e-4 * scale, "logit \(i)") }
  }
}

/// Just enough of ONNX's operator semantics for the exported graph, written from the spec.
enum NaiveONNX {
  struct T { var shape: [Int]; var data: [Double] }

  static func run(_ m: Onnx_ModelProto, input: [Float], shape: [Int], output: String) throws -> [Float] {
    var env: [String: T] = [:]
    for t in m.graph.initializer {
      let floats = t.rawData.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
      env[t.name] = T(shape: t.dims.map(Int.init), data: floats.map(Double.init))
    }
    env[m.graph.input[0].name] = T(shape: shape, data: input.map(Double.init))
    func attr(_ n: Onnx_NodeProto, _ name: String) -> Onnx_AttributeProto? { n.attribute.first { $0.name == name } }
    for n in m.graph.node {
      let x = env[n.input[0]]!
      var y: T
      switch n.opType {
      case "Transpose":
        let p = attr(n, "perm")!.ints.map(Int.init)
        let s = x.shape, os = p.map { s[$0] }
        y = T(shape: os, data: [Double](repeating: 0, count: x.data.count))
        let strides = (0..<4).map { i in s[(i + 1)...].reduce(1, *) }
        for a in 0..<os[0] { for b in 0..<os[1] { for c in 0..<os[2] { for d in 0..<os[3] {
          var idx = [0, 0, 0, 0]; idx[p[0]] = a; idx[p[1]] = b; idx[p[2]] = c; idx[p[3]] = d
          y.data[((a * os[1] + b) * os[2] + c) * os[3] + d] = x.data[zip(idx, strides).map { $0 * $1 }.reduce(0, +)]
        } } } }
      case "Conv":
        let w = env[n.input[1]]!, b = n.input.count > 2 ? env[n.input[2]]! : nil
        let k = w.shape[2], s = Int(attr(n, "strides")?.ints.first ?? 1)
        let pads = attr(n, "pads")?.ints.map(Int.init) ?? [0, 0, 0, 0]
        let group = Int(attr(n, "group")?.i ?? 1)
        let (nb, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let co = w.shape[0], cpg = w.shape[1]
        let oh = (h + pads[0] + pads[2] - k) / s + 1, ow = (wd + pads[1] + pads[3] - k) / s + 1
        y = T(shape: [nb, co, oh, ow], data: [Double](repeating: 0, count: nb * co * oh * ow))
        let opg = co / group
        for bi in 0..<nb { for o in 0..<co { for oy in 0..<oh { for ox in 0..<ow {
          var acc = b?.data[o] ?? 0
          let g = o / opg
          for ci in 0..<cpg { for ky in 0..<k { for kx in 0..<k {
            let iy = oy * s - pads[0] + ky, ix = ox * s - pads[1] + kx
            if iy < 0 || iy >= h || ix < 0 || ix >= wd { continue }
            acc += w.data[((o * cpg + ci) * k + ky) * k + kx] * x.data[((bi * c + g * cpg + ci) * h + iy) * wd + ix]
          } } }
          y.data[((bi * co + o) * oh + oy) * ow + ox] = acc
        } } } }
      case "Clip":
        let lo = env[n.input[1]]!.data[0], hi = env[n.input[2]]!.data[0]
        y = T(shape: x.shape, data: x.data.map { min(max($0, lo), hi) })
      case "Add":
        let b = env[n.input[1]]!
        y = T(shape: x.shape, data: zip(x.data, b.data).map(+))
      case "GlobalAveragePool":
        let (nb, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        y = T(shape: [nb, c, 1, 1], data: (0..<(nb * c)).map { i in x.data[(i * hw)..<((i + 1) * hw)].reduce(0, +) / Double(hw) })
      case "Flatten":
        y = T(shape: [x.shape[0], x.data.count / x.shape[0]], data: x.data)
      case "Softmax":
        let k = x.shape[1]
        var d = x.data
        for r in 0..<x.shape[0] {
          let row = d[(r * k)..<((r + 1) * k)], mx = row.max()!
          let e = row.map { exp($0 - mx) }, sum = e.reduce(0, +)
          for j in 0..<k { d[r * k + j] = e[j] / sum }
        }
        y = T(shape: x.shape, data: d)
      default:
        throw CheckpointError("naive interpreter: no operator \(n.opType)")
      }
      env[n.output[0]] = y
    }
    return env[output]!.data.map(Float.init)
  }
}
