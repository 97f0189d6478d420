// The inference graph of a MobileNetV2 as an ONNX model (opset 13), for onnxruntime and other
// deployment runtimes.
//
//   input   "images"         float32 [N, H, W, 3], NHWC as TensorFlow feeds it, values in [-1, 1]
//                            (inception preprocessing: (pixel/255 − 0.5)·2), N dynamic, H = W = the
//                            checkpoint's image size
//   outputs "logits"         float32 [N, classes]
//           "probabilities"  softmax of the logits
//
// One Transpose turns the input into ONNX's NCHW. Every conv+BN pair becomes one Conv with batch norm
// folded in (w·γ/√(σ²+ε), β − μ·γ/√(σ²+ε), computed in double), ReLU6 is Clip(0, 6), and TF's SAME
// padding is written out explicitly per layer (stride 2 on an even input pads 0 before, 1 after;
// ONNX's auto_pad SAME_UPPER would agree but explicit pads leave nothing to interpretation).
import Checkpoint
import Common
import Foundation
import Kernels
import MobileNet
import SwiftProtobuf

public enum ONNXExport {
  public static let opset: Int64 = 13
  /// IR version 7 is the one onnx 1.8+ writes for opset 13.
  public static let irVersion: Int64 = 7
  public static let inputName = "images"
  public static let logitsName = "logits"
  public static let probabilitiesName = "probabilities"

  /// TF SAME padding of one spatial dimension: (before, after).
  public static func samePads(input: Int, kernel: Int, stride: Int) -> (Int, Int) {
    let out = SamePadding.outputSize(input, stride: stride)
    let total = max((out - 1) * stride + kernel - input, 0)
    return (total / 2, total - total / 2)
  }

  public static func model(_ net: MobileNetV2, epsilon: Float = BatchNormDefaults.epsilon) -> Onnx_ModelProto {
    let g = net.graph
    var graph = Onnx_GraphProto()
    graph.name = "\(net.config.modelName)_inference"
    func value(_ name: String, _ dims: [Any]) -> Onnx_ValueInfoProto {
      var v = Onnx_ValueInfoProto()
      v.name = name
      var t = Onnx_TypeProto.Tensor()
      t.elemType = Int32(Onnx_TensorProto.DataType.float.rawValue)
      t.shape.dim = dims.map { d in
        var dim = Onnx_TensorShapeProto.Dimension()
        if let n = d as? Int { dim.dimValue = Int64(n) } else { dim.dimParam = "\(d)" }
        return dim
      }
      v.type.tensorType = t
      return v
    }
    func initializer(_ name: String, _ dims: [Int], _ values: [Float]) {
      var t = Onnx_TensorProto()
      t.name = name
      t.dims = dims.map(Int64.init)
      t.dataType = Int32(Onnx_TensorProto.DataType.float.rawValue)
      t.rawData = values.withUnsafeBytes { Data($0) }  // little-endian float32, as ONNX specifies
      graph.initializer.append(t)
    }
    func node(_ op: String, _ inputs: [String], _ output: String, _ attributes: [Onnx_AttributeProto] = []) {
      var n = Onnx_NodeProto()
      n.opType = op
      n.name = output
      n.input = inputs
      n.output = [output]
      n.attribute = attributes
      graph.node.append(n)
    }
    func ints(_ name: String, _ v: [Int]) -> Onnx_AttributeProto {
      var a = Onnx_AttributeProto(); a.name = name; a.type = .ints; a.ints = v.map(Int64.init); return a
    }
    func int(_ name: String, _ v: Int) -> Onnx_AttributeProto {
      var a = Onnx_AttributeProto(); a.name = name; a.type = .int; a.i = Int64(v); return a
    }

    graph.input = [value(inputName, ["N", net.config.imageSize, net.config.imageSize, 3])]
    node("Transpose", [inputName], "images_nchw", [ints("perm", [0, 3, 1, 2])])
    initializer("relu6_min", [], [0])
    initializer("relu6_max", [], [6])

    func convBN(_ i: Int, _ x: String) -> String {
      let l = g.layers[i]
      let wt = net.tensor(named: l.weightName)!
      let gamma = net.tensor(named: l.batchNorm("gamma"))!, beta = net.tensor(named: l.batchNorm("beta"))!
      let mean = net.tensor(named: l.batchNorm("moving_mean"))!, variance = net.tensor(named: l.batchNorm("moving_variance"))!
      let k = l.kernel, co = l.outChannels
      let depthwise: Bool
      if case .depthwise = l.kind { depthwise = true } else { depthwise = false }
      let ci = depthwise ? 1 : l.inChannels
      // TF layouts: HWIO [k, k, ci, co], depthwise [k, k, C, 1]; ONNX: OIHW [co, ci/group, k, k].
      var w = [Float](repeating: 0, count: co * ci * k * k)
      var b = [Float](repeating: 0, count: co)
      for o in 0..<co {
        let s = Double(gamma[o]) / (Double(variance[o]) + Double(epsilon)).squareRoot()
        b[o] = Float(Double(beta[o]) - Double(mean[o]) * s)
        for i in 0..<ci {
          for y in 0..<k {
            for xk in 0..<k {
              let src = depthwise ? (y * k + xk) * co + o : ((y * k + xk) * ci + i) * co + o
              w[((o * ci + i) * k + y) * k + xk] = Float(Double(wt[src]) * s)
            }
          }
        }
      }
      initializer("\(l.scope)/folded_weights", [co, ci, k, k], w)
      initializer("\(l.scope)/folded_biases", [co], b)
      let (top, bottom) = samePads(input: l.inSize, kernel: k, stride: l.stride)
      let out = l.relu6 ? "\(l.scope)/conv" : l.scope
      node("Conv", [x, "\(l.scope)/folded_weights", "\(l.scope)/folded_biases"], out, [
        ints("kernel_shape", [k, k]), ints("strides", [l.stride, l.stride]),
        ints("pads", [top, top, bottom, bottom]), ints("dilations", [1, 1]), int("group", depthwise ? co : 1),
      ])
      guard l.relu6 else { return out }
      node("Clip", [out, "relu6_min", "relu6_max"], l.scope)
      return l.scope
    }

    var x = convBN(g.stem, "images_nchw")
    for (bi, blk) in g.blocks.enumerated() {
      let input = x
      if let e = blk.expand { x = convBN(e, x) }
      x = convBN(blk.depthwise, x)
      x = convBN(blk.project, x)
      if blk.residual {
        let sum = "\(g.layers[blk.project].scope)/add_\(bi)"
        node("Add", [x, input], sum)
        x = sum
      }
    }
    x = convBN(g.lastConv, x)
    node("GlobalAveragePool", [x], "\(MobileNetV2.scopePrefix)/Logits/AvgPool")
    let k = net.config.numClasses, c = g.layers[g.lastConv].outChannels
    let lw = net.tensor(named: g.logitsWeights)!  // [1, 1, C, K] → [K, C, 1, 1]
    var w = [Float](repeating: 0, count: k * c)
    for o in 0..<k { for i in 0..<c { w[o * c + i] = lw[i * k + o] } }
    initializer(g.logitsWeights, [k, c, 1, 1], w)
    initializer(g.logitsBiases, [k], net.tensor(named: g.logitsBiases)!)
    node("Conv", ["\(MobileNetV2.scopePrefix)/Logits/AvgPool", g.logitsWeights, g.logitsBiases],
         "\(MobileNetV2.scopePrefix)/Logits/Conv2d_1c_1x1", [ints("kernel_shape", [1, 1])])
    node("Flatten", ["\(MobileNetV2.scopePrefix)/Logits/Conv2d_1c_1x1"], logitsName, [int("axis", 1)])
    node("Softmax", [logitsName], probabilitiesName, [int("axis", 1)])
    graph.output = [value(logitsName, ["N", k]), value(probabilitiesName, ["N", k])]

    var m = Onnx_ModelProto()
    m.irVersion = irVersion
    var op = Onnx_OperatorSetIdProto()
    op.domain = ""
    op.version = opset
    m.opsetImport = [op]
    m.producerName = "mobilenet-v2-trainer"
    m.producerVersion = ModelCheckpoint.formatVersion
    m.graph = graph
    return m
  }

  /// Writes the model atomically to `path`.
  public static func write(_ net: MobileNetV2, to path: String) throws {
    try write([UInt8](try model(net).serializedData()), to: path)
  }

  /// Writes a serialized model atomically to `path`.
  public static func write(_ bytes: [UInt8], to path: String) throws {
    try AtomicFile.write(bytes, to: path)
  }
}
