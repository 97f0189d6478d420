// The MobileNetV2 network: layer list, parameter slabs, and the training forward/backward pass.
//
// Every conv is followed by batch norm (and ReLU6 unless it is a `project` layer), so the network is
// a list of ConvBN layers plus residual adds and the head. Activations for one batch size live in a
// single arena (`Activations`) allocated once and reused every step; backward writes activation
// gradients into five scratch buffers of that arena and accumulates parameter gradients into the
// gradient slab (call `zeroGradients()` once per step).
import Common
import Kernels

/// How batch norm and dropout behave in a forward pass.
public struct ForwardMode: Equatable, Sendable {
  /// Batch statistics (and moving-average updates) instead of the moving statistics.
  public var batchNormTraining: Bool
  /// Dropout before the logits (keep probability from the config).
  public var dropout: Bool
  public init(batchNormTraining: Bool, dropout: Bool) {
    self.batchNormTraining = batchNormTraining
    self.dropout = dropout
  }
  public static let training = ForwardMode(batchNormTraining: true, dropout: true)
  public static let inference = ForwardMode(batchNormTraining: false, dropout: false)
}

/// A convolution (stem K×K, 1×1 or depthwise) followed by batch norm and optionally ReLU6.
struct ConvBNLayer {
  enum Op { case conv(kernel: Int), pointwise, depthwise(kernel: Int) }
  let scope: String
  let op: Op
  let inChannels, outChannels, stride, inSize, outSize: Int
  let relu6: Bool
  var weight = 0, gamma = 0, beta = 0   // offsets in the trainable slab
  var movingMean = 0, movingVariance = 0 // offsets in the state slab

  var weightName: String {
    if case .depthwise = op { return "\(scope)/depthwise_weights" }
    return "\(scope)/weights"
  }
  var weightShape: [Int] {
    switch op {
    case .conv(let k): return [k, k, inChannels, outChannels]
    case .pointwise: return [1, 1, inChannels, outChannels]
    case .depthwise(let k): return [k, k, inChannels, 1]
    }
  }
  var weightRole: TensorRole {
    if case .depthwise = op { return .depthwiseWeights }
    return .convWeights
  }
  func outputCount(batch: Int) -> Int { batch * outSize * outSize * outChannels }
  func inputCount(batch: Int) -> Int { batch * inSize * inSize * inChannels }
}

/// One inverted-residual block: optional expand, depthwise, project, optional residual.
struct Block {
  let expand: Int?      // index into layers
  let depthwise: Int
  let project: Int
  let residual: Bool
}

public final class MobileNetV2 {
  public let config: ModelConfig
  public let trainable: SlabLayout
  public let state: SlabLayout
  /// Trainable values, gradients (same layout) and non-trainable state (BN moving statistics).
  public let parameters: FloatBuffer
  public let gradients: FloatBuffer
  public let stateValues: FloatBuffer

  let layers: [ConvBNLayer]
  let blocks: [Block]
  let stemIndex: Int
  let lastConvIndex: Int
  let logitsWeights: Int
  let logitsBiases: Int
  public let featureDepth: Int
  /// Moving-average decay of the BN statistics (slim's bn_decay, 0.997). Short runs may lower it:
  /// with 0.997 the initial statistics still weigh 0.997^1000 = 5% after a thousand steps.
  public var batchNormDecay: Float = BatchNormDefaults.decay
  let scratch = Scratch()
  private var activations: Activations?
  /// Arithmetic of the convolutions and the logits GEMM (MixedPrecision.swift); float32 by default.
  public var precision: Precision = .fp32
  private lazy var bf16 = BF16Operands(parameterCount: trainable.count)
  /// How bf16 mode computes the 1×1 convolutions and the logits: the generated vdpbf16ps GEMM where the
  /// CPU has AVX512-BF16, else float32 kernels on rounded operands (tests switch it to compare the two).
  public var bf16Arithmetic: BF16Arithmetic = .host
  private var jit: Bool { precision == .bf16 && bf16Arithmetic == .jit }
  /// Whether layer i reads bf16 operands: in bf16 mode every conv except the float32 expand pairs.
  private func bf16Layer(_ i: Int) -> Bool { precision == .bf16 && !(BF16Float32Expands.enabled && float32Pairs.contains(i)) }
  /// Whether 1×1 layer i runs on the generated bf16 GEMM.
  private func jit(_ i: Int) -> Bool { jit && bf16Layer(i) }
  /// The expand layers `BF16Float32Expands` keeps in float32 in bf16 mode, with their depthwise layers.
  private lazy var float32Pairs: Set<Int> = {
    Set(blocks.compactMap { b -> [Int]? in
      guard let e = b.expand else { return nil }
      let l = layers[e]
      return BF16Float32Expands.keeps(inChannels: l.inChannels, outChannels: l.outChannels, size: l.inSize) ? [e, b.depthwise] : nil
    }.joined())
  }()
  /// The scopes of the layers bf16 mode keeps in float32 (`BF16Float32Expands`), in network order.
  public var float32LayersInBF16: [String] {
    BF16Float32Expands.enabled ? float32Pairs.sorted().map { layers[$0].scope } : []
  }
  /// The GEMM weights the JIT reads packed: every 1×1 convolution on it and the logits.
  private var packedWeights: [(offset: Int, k: Int, n: Int)] {
    layers.indices.filter { i in if case .pointwise = layers[i].op { return jit(i) } else { return false } }
      .map { (layers[$0].weight, layers[$0].inChannels, layers[$0].outChannels) } + [(logitsWeights, featureDepth, config.numClasses)]
  }

  /// TF-slim training_scope default initializer: truncated normal, stddev 0.09.
  public static let initStddev = 0.09
  public static let scopePrefix = "MobilenetV2"

  public init(config: ModelConfig, seed: UInt64 = 0) {
    self.config = config
    var layers: [ConvBNLayer] = []
    var blocks: [Block] = []
    let p = MobileNetV2.scopePrefix

    var size = SamePadding.outputSize(config.imageSize, stride: MobileNetV2Def.stemStride)
    var depth = config.depth(MobileNetV2Def.stemDepth)
    layers.append(ConvBNLayer(scope: "\(p)/Conv", op: .conv(kernel: 3), inChannels: 3, outChannels: depth,
                              stride: MobileNetV2Def.stemStride, inSize: config.imageSize, outSize: size, relu6: true))
    stemIndex = 0
    for (i, b) in MobileNetV2Def.blocks.enumerated() {
      let scope = i == 0 ? "\(p)/expanded_conv" : "\(p)/expanded_conv_\(i)"
      let out = config.depth(b.depth)
      // expansion 1 uses divisible_by=1, i.e. the input depth itself: no expand layer.
      let inner = b.expansion == 1 ? depth : MobileNetV2Def.makeDivisible(Double(depth * b.expansion))
      var expand: Int? = nil
      if inner > depth {
        expand = layers.count
        layers.append(ConvBNLayer(scope: "\(scope)/expand", op: .pointwise, inChannels: depth, outChannels: inner,
                                  stride: 1, inSize: size, outSize: size, relu6: true))
      }
      let outSize = SamePadding.outputSize(size, stride: b.stride)
      let dw = layers.count
      layers.append(ConvBNLayer(scope: "\(scope)/depthwise", op: .depthwise(kernel: 3), inChannels: inner,
                                outChannels: inner, stride: b.stride, inSize: size, outSize: outSize, relu6: true))
      let proj = layers.count
      layers.append(ConvBNLayer(scope: "\(scope)/project", op: .pointwise, inChannels: inner, outChannels: out,
                                stride: 1, inSize: outSize, outSize: outSize, relu6: false))
      blocks.append(Block(expand: expand, depthwise: dw, project: proj, residual: b.stride == 1 && depth == out))
      depth = out
      size = outSize
    }
    lastConvIndex = layers.count
    featureDepth = config.lastConvDepth
    layers.append(ConvBNLayer(scope: "\(p)/Conv_1", op: .pointwise, inChannels: depth, outChannels: featureDepth,
                              stride: 1, inSize: size, outSize: size, relu6: true))

    // Slabs: trainable tensors in backward order (logits first), state in forward order.
    var t = SlabLayout(), s = SlabLayout()
    let logitsScope = "\(p)/Logits/Conv2d_1c_1x1"
    logitsWeights = t.add("\(logitsScope)/weights", [1, 1, featureDepth, config.numClasses], .logitsWeights)
    logitsBiases = t.add("\(logitsScope)/biases", [config.numClasses], .biases)
    for i in layers.indices.reversed() {
      let l = layers[i]
      layers[i].weight = t.add(l.weightName, l.weightShape, l.weightRole)
      layers[i].gamma = t.add("\(l.scope)/BatchNorm/gamma", [l.outChannels], .gamma)
      layers[i].beta = t.add("\(l.scope)/BatchNorm/beta", [l.outChannels], .beta)
    }
    for i in layers.indices {
      let l = layers[i]
      layers[i].movingMean = s.add("\(l.scope)/BatchNorm/moving_mean", [l.outChannels], .movingMean)
      layers[i].movingVariance = s.add("\(l.scope)/BatchNorm/moving_variance", [l.outChannels], .movingVariance)
    }
    self.layers = layers
    self.blocks = blocks
    trainable = t
    state = s
    parameters = FloatBuffer(count: t.count)
    gradients = FloatBuffer(count: t.count)
    stateValues = FloatBuffer(count: s.count)
    initialize(seed: seed)
  }

  /// Number of trainable scalars (what slim's parameter count reports).
  public var parameterCount: Int { trainable.count }

  /// TF-slim training-scope initialisation. Each tensor draws from its own stream derived from
  /// (seed, name), so a tensor's initial value does not depend on the others.
  public func initialize(seed: UInt64) {
    for spec in trainable.specs + state.specs {
      let buf = spec.role.isTrainable ? parameters : stateValues
      let dst = buf.base + spec.offset
      switch spec.role {
      case .convWeights, .depthwiseWeights, .logitsWeights:
        var rng = RandomState(seed: seed ^ fnv1a(spec.name.utf8))
        for i in 0..<spec.count { dst[i] = rng.truncatedNormal(stddev: MobileNetV2.initStddev) }
      case .gamma, .movingVariance: dst.update(repeating: 1, count: spec.count)
      case .beta, .biases, .movingMean: dst.update(repeating: 0, count: spec.count)
      }
    }
  }

  public func zeroGradients() { gradients.zero() }

  // MARK: - Activations

  func activations(batch: Int) -> Activations {
    if let a = activations, a.batch == batch { return a }
    activations = nil  // free the old arena before allocating the new one
    let a = Activations(model: self, batch: batch)
    activations = a
    return a
  }

  /// The input buffer [batch, size, size, 3] (NHWC, values in [−1, 1]) that the next forward reads.
  public func inputBuffer(batch: Int) -> UnsafeMutablePointer<Float> { activations(batch: batch).input }
  /// Labels [batch] for the next loss computation.
  public func labelBuffer(batch: Int) -> UnsafeMutablePointer<Int32> { activations(batch: batch).labels }
  /// Logits [batch, numClasses] of the last forward.
  public func logits(batch: Int) -> UnsafeMutablePointer<Float> { activations(batch: batch).logits }
  /// Bytes of activation memory allocated for `batch`.
  public func activationBytes(batch: Int) -> Int { activations(batch: batch).arena.count * 4 }

  private func w(_ offset: Int) -> UnsafeMutablePointer<Float> { parameters.base + offset }
  private func g(_ offset: Int) -> UnsafeMutablePointer<Float> { gradients.base + offset }
  private func st(_ offset: Int) -> UnsafeMutablePointer<Float> { stateValues.base + offset }
  /// Layer i's weights as its kernel reads them: the float32 slab, or its bf16-rounded copy.
  private func kw(layer i: Int) -> UnsafeMutablePointer<Float> { kw(layers[i].weight, bf16: bf16Layer(i)) }
  private func kw(_ offset: Int, bf16 rounded: Bool) -> UnsafeMutablePointer<Float> {
    rounded ? bf16.weights.base + offset : parameters.base + offset
  }
  /// A kernel's input activation (`count` floats) as it reads it: x, or, for a bf16 reader, a
  /// bf16-rounded copy (none for the tensors bf16 mode stores rounded already, see `storedRounded`).
  private func kx(_ x: UnsafePointer<Float>, _ count: Int, _ act: Activations, bf16 rounded: Bool) -> UnsafePointer<Float> {
    rounded && !storedRounded(x, act) ? bf16.rounded(x, count: count, in: bf16.activation) : x
  }
  /// The logits' output gradient as backward reads it: dy, or a bf16-rounded copy. (The convolutions'
  /// output gradients are rounded by the BN backward that writes them, see `roundsOutputGradient`.)
  private func kdy(_ dy: UnsafePointer<Float>, _ count: Int) -> UnsafePointer<Float> {
    precision == .bf16 ? bf16.rounded(dy, count: count, in: bf16.gradient) : dy
  }
  /// bf16 mode rounds the network input in place (the stem is its only reader) instead of copying
  /// it for each reader; the activations read through a PendingBatchNorm are rounded by it.
  private func storedRounded(_ x: UnsafePointer<Float>, _ act: Activations) -> Bool {
    x == UnsafePointer(act.input)
  }
  /// Whether block 0's depthwise applies the stem's BN + ReLU6 as it reads (as every depthwise does
  /// for its expand layer): when block 0 has no expand layer and no residual (MobileNetV2's
  /// expansion-1 first block), nothing else reads the stem's activation and it is not stored.
  var stemActivationPending: Bool { blocks.first.map { $0.expand == nil && !$0.residual } ?? false }
  /// Whether layer i's BN backward writes dz rounded to bf16: every conv backward reads bf16 output
  /// gradients, except the JIT 1×1, which converts dz block by block itself.
  private func roundsOutputGradient(_ i: Int) -> Bool {
    guard bf16Layer(i) else { return false }
    if case .pointwise = layers[i].op { return !jit(i) }
    return true
  }

  // MARK: - Forward

  /// Runs the network on `inputBuffer(batch:)` (rounded to bf16 in place in bf16 mode); returns the
  /// logits [batch, numClasses].
  @discardableResult
  public func forward(batch: Int, mode: ForwardMode, rng: inout RandomState) -> UnsafeMutablePointer<Float> {
    let act = activations(batch: batch)
    act.mode = mode
    if precision == .bf16 {
      bf16.refreshWeights(from: parameters, pack: jit ? packedWeights : [])
      roundToBF16(act.input, act.input, count: layers[stemIndex].inputCount(batch: batch))
    }
    var x = UnsafePointer(act.input)
    convBNForward(stemIndex, x: x, act: act)
    let stemInput = stemActivationPending ? pendingBatchNorm(stemIndex, act) : nil
    x = stemInput == nil ? UnsafePointer(act.a[stemIndex]!) : UnsafePointer(act.z[stemIndex])
    for (bi, b) in blocks.enumerated() {
      if let e = b.expand {
        // The expand layer's activation is never stored: the depthwise applies its BN + ReLU6 to z as
        // it reads (and its backward does the same), so the largest tensors are written once, as z.
        if takesFusedForward(e, act) {
          expandDepthwiseFusedForward(e, depthwise: b.depthwise, x: x, act: act)
        } else {
          convBNForward(e, x: x, act: act)
          convBNForward(b.depthwise, x: UnsafePointer(act.z[e]), act: act, input: pendingBatchNorm(e, act))
        }
      } else {
        convBNForward(b.depthwise, x: x, act: act, input: bi == 0 ? stemInput : nil)
      }
      // The depthwise's activation is not stored either: the project 1×1 applies its BN + ReLU6 to z
      // block by block as it reads (and its weight gradient does the same in backward).
      // The project layer has no activation, so its BN output is not needed by backward: the
      // residual sum is written in its place, by the same pass that applies BN.
      convBNForward(b.project, x: UnsafePointer(act.z[b.depthwise]), act: act, residual: b.residual ? x : nil,
                    input: pendingBatchNorm(b.depthwise, act))
      x = UnsafePointer(act.a[b.project]!)
    }
    convBNForward(lastConvIndex, x: x, act: act)
    let last = layers[lastConvIndex]
    let C = featureDepth
    globalAvgPoolForward(y: act.pooled, x: act.a[lastConvIndex]!, batch: batch,
                         pixels: last.outSize * last.outSize, channels: C)
    var features = UnsafePointer(act.pooled)
    if mode.dropout && config.dropoutKeepProb < 1 {
      dropoutForward(y: act.dropped, mask: act.dropoutMask, x: act.pooled, count: batch * C,
                     keep: config.dropoutKeepProb, rng: &rng)
      features = UnsafePointer(act.dropped)
    }
    act.features = features
    if jit {
      denseForwardBF16(y: act.logits, x: features, w: bf16.forward(logitsWeights), b: w(logitsBiases), rows: batch,
                       workspace: bf16.workspace)
    } else {
      denseForward(y: act.logits, x: kx(features, batch * C, act, bf16: precision == .bf16),
                   w: kw(logitsWeights, bf16: precision == .bf16), b: w(logitsBiases),
                   rows: batch, inChannels: C, outChannels: config.numClasses)
    }
    return act.logits
  }

  /// The conv, then BN(+ReLU6)(+residual) in one pass. In training the conv kernel itself makes the
  /// batch statistics of z while it writes it (fused: no statistics pass over z).
  private func convBNForward(_ i: Int, x: UnsafePointer<Float>, act: Activations, residual: UnsafePointer<Float>? = nil,
                             input: PendingBatchNorm? = nil) {
    Profile.time(layer: i) { convBNForwardSections(i, x: x, act: act, residual: residual, input: input) }
  }

  private func convBNForwardSections(_ i: Int, x: UnsafePointer<Float>, act: Activations, residual: UnsafePointer<Float>?,
                                     input: PendingBatchNorm?) {
    let l = layers[i]
    let n = act.batch
    let z = act.z[i]
    let training = act.mode.batchNormTraining
    // bf16: rounded operands. A depthwise reading the expand layer's raw z rounds the activation it
    // makes from z as it reads (PendingBatchNorm.roundToBF16), never z itself.
    let weight = kw(layer: i)
    // The JIT 1×1 converts x itself, block by block: no rounded copy then.
    var xk: UnsafePointer<Float> { input == nil ? kx(x, l.inputCount(batch: n), act, bf16: bf16Layer(i)) : x }
    let (shift, sums) = (act.statShift[i], act.statSums[i])
    switch l.op {
    case .conv(let k):
      Profile.time(.stemConv) {
        let s = convShape(l, batch: n, kernel: k)
        if training {
          conv2dForward(y: z, x: xk, w: weight, s, statisticsShift: shift, sums: sums, scratch: scratch)
        } else {
          conv2dForward(y: z, x: xk, w: weight, s, scratch: scratch)
        }
      }
    case .pointwise:
      Profile.time(.pointwise) {
        let rows = n * l.inSize * l.inSize
        if jit(i) {
          pointwiseForwardBF16(y: z, x: x, w: bf16.forward(l.weight), rows: rows, statisticsShift: training ? shift : nil,
                               sums: training ? sums : nil, scratch: scratch, workspace: bf16.workspace, input: input)
        } else if training {
          pointwiseForward(y: z, x: xk, w: weight, rows: rows, inChannels: l.inChannels, outChannels: l.outChannels,
                           statisticsShift: shift, sums: sums, scratch: scratch, input: input)
        } else if let input {
          pointwiseForward(y: z, x: x, w: weight, rows: rows, inChannels: l.inChannels, outChannels: l.outChannels,
                           input: input, scratch: scratch)
        } else {
          pointwiseForward(y: z, x: xk, w: weight, rows: rows, inChannels: l.inChannels, outChannels: l.outChannels)
        }
      }
    case .depthwise(let k):
      Profile.time(.depthwise) {
        let s = depthwiseShape(l, batch: n, kernel: k)
        if training {
          depthwiseForward(y: z, x: xk, w: weight, s, statisticsShift: shift, sums: sums, scratch: scratch, input: input)
        } else {
          depthwiseForward(y: z, x: xk, w: weight, s, input: input, scratch: scratch)
        }
      }
    }
    Profile.time(.batchNorm) { batchNormFromStatistics(i, act: act, residual: residual) }
  }

  /// Layer i's batch norm from the statistics its conv left in act.statShift/statSums (training) or
  /// from its moving averages; writes its activation where it is stored.
  private func batchNormFromStatistics(_ i: Int, act: Activations, residual: UnsafePointer<Float>?) {
    let l = layers[i]
    batchNormForward(fromSums: act.statSums[i], shift: act.statShift[i], a: act.a[i], z: act.z[i], gamma: w(l.gamma),
                     beta: w(l.beta), mean: act.mean[i], invStd: act.invStd[i],
                     movingMean: st(l.movingMean), movingVariance: st(l.movingVariance),
                     rows: l.outputCount(batch: act.batch) / l.outChannels, channels: l.outChannels,
                     training: act.mode.batchNormTraining, relu6: l.relu6, residual: residual, scaleShift: act.scaleShift[i],
                     decay: batchNormDecay)
  }

  /// Whether expand layer i and the depthwise after it take the fused training forward
  /// (`expandDepthwiseForward`: z made in cache and read there, its BN statistics from x's covariance).
  private func takesFusedForward(_ i: Int, _ act: Activations) -> Bool {
    let l = layers[i]
    return act.mode.batchNormTraining && !bf16Layer(i) && !bf16Layer(i + 1)
      && FusedExpandForward.use(rows: act.batch * l.inSize * l.inSize, inChannels: l.inChannels, outChannels: l.outChannels)
  }

  /// The training forward of expand layer e and depthwise layer d in one pass: e's BN statistics from
  /// x's mean and covariance (under e in the profile), then z and d's output group by group (under d).
  private func expandDepthwiseFusedForward(_ e: Int, depthwise d: Int, x: UnsafePointer<Float>, act: Activations) {
    let (le, ld) = (layers[e], layers[d])
    let n = act.batch
    guard case .depthwise(let kernel) = ld.op else { preconditionFailure("layer \(d) is not a depthwise") }
    Profile.time(layer: e) {
      Profile.time(.pointwise) {
        pointwiseStatisticsFromInput(x: x, w: w(le.weight), rows: n * le.inSize * le.inSize, inChannels: le.inChannels,
                                     outChannels: le.outChannels, statisticsShift: act.statShift[e], sums: act.statSums[e],
                                     scratch: scratch)
      }
      Profile.time(.batchNorm) { batchNormFromStatistics(e, act: act, residual: nil) }
    }
    Profile.time(layer: d) {
      Profile.time(.depthwise) {
        expandDepthwiseForward(z: act.z[e], x: x, expandWeights: w(le.weight), inChannels: le.inChannels,
                               expanded: pendingBatchNorm(e, act), y: act.z[d], depthwiseWeights: w(ld.weight),
                               depthwiseShape(ld, batch: n, kernel: kernel), statisticsShift: act.statShift[d],
                               sums: act.statSums[d], scratch: scratch)
      }
      Profile.time(.batchNorm) { batchNormFromStatistics(d, act: act, residual: nil) }
    }
  }

  /// Layer i's BN + ReLU6 as its consumer applies them to z (layer i's activation is not stored).
  private func pendingBatchNorm(_ i: Int, _ act: Activations) -> PendingBatchNorm {
    // A pending activation's one reader is the next layer (expand → depthwise, depthwise → project,
    // the stem → block 0's depthwise): it rounds the activation when that layer reads bf16.
    PendingBatchNorm(scale: act.scaleShift[i], shift: act.scaleShift[i] + layers[i].outChannels, relu6: layers[i].relu6,
                     roundToBF16: bf16Layer(i + 1))
  }

  /// What the kernel producing layer i's output gradient needs to make that layer's BN backward
  /// reductions on the fly (they land in act.gradSums[i]).
  private func reduction(_ i: Int, _ act: Activations) -> BatchNormReduction {
    let C = layers[i].outChannels
    return BatchNormReduction(z: act.z[i], scale: act.scaleShift[i], shift: act.scaleShift[i] + C, mean: act.mean[i],
                              invStd: act.invStd[i], relu6: layers[i].relu6, sums: act.gradSums[i])
  }

  /// Each conv + BN layer in network order, as `Profile`'s layer indices number them: its scope, kind
  /// ("conv", "1x1", "depthwise"), channels, input size and stride.
  public var layerSummaries: [(scope: String, kind: String, inChannels: Int, outChannels: Int, inSize: Int, stride: Int)] {
    layers.map { l in
      let kind: String
      switch l.op {
      case .conv: kind = "conv"
      case .pointwise: kind = "1x1"
      case .depthwise: kind = "depthwise"
      }
      return (l.scope, kind, l.inChannels, l.outChannels, l.inSize, l.stride)
    }
  }

  func convShape(_ l: ConvBNLayer, batch: Int, kernel: Int) -> ConvShape {
    ConvShape(batch: batch, height: l.inSize, width: l.inSize, inChannels: l.inChannels,
              outChannels: l.outChannels, kernel: kernel, stride: l.stride)
  }
  func depthwiseShape(_ l: ConvBNLayer, batch: Int, kernel: Int) -> DepthwiseShape {
    DepthwiseShape(batch: batch, height: l.inSize, width: l.inSize, channels: l.inChannels,
                   kernel: kernel, stride: l.stride)
  }

  // MARK: - Loss

  /// Label-smoothed softmax cross-entropy of the last forward against `labelBuffer`; also writes
  /// the logits gradient used by `backward`.
  @discardableResult
  public func loss(batch: Int, labelSmoothing: Float) -> LossResult {
    let act = activations(batch: batch)
    return softmaxCrossEntropy(dLogits: act.dLogits, logits: act.logits, labels: act.labels,
                               batch: batch, classes: config.numClasses, labelSmoothing: labelSmoothing)
  }

  // MARK: - Backward

  /// Back-propagates the logits gradient of the last `loss` call, accumulating into `gradients`.
  /// `onGradientsReady(range)` is called with each range of the gradient slab as soon as it is final
  /// (front to back), so a communication thread can start reducing it while backward continues.
  public func backward(batch: Int, onGradientsReady: ((Range<Int>) -> Void)? = nil) {
    let act = activations(batch: batch)
    let C = featureDepth
    let last = layers[lastConvIndex]
    // Head: logits → dropout → pool.
    if jit {
      denseBackwardBF16(dx: act.dPooled, dw: g(logitsWeights), db: g(logitsBiases), dy: act.dLogits,
                        roundedDY: kdy(act.dLogits, batch * config.numClasses),
                        roundedX: kx(act.features, batch * C, act, bf16: true),
                        wT: bf16.transposed(logitsWeights), rows: batch, scratch: scratch, workspace: bf16.workspace)
    } else {
      denseBackward(dx: act.dPooled, dw: g(logitsWeights), db: g(logitsBiases),
                    dy: kdy(act.dLogits, batch * config.numClasses), x: kx(act.features, batch * C, act, bf16: precision == .bf16),
                    w: kw(logitsWeights, bf16: precision == .bf16), rows: batch, inChannels: C, outChannels: config.numClasses,
                    scratch: scratch)
    }
    if act.features == UnsafePointer(act.dropped) {
      dropoutBackward(dx: act.dPooled, dy: act.dPooled, mask: act.dropoutMask, count: batch * C)
    }
    var readyFrom = 0
    func ready(upTo layerIndex: Int) {
      // The slab holds layers in reverse forward order, each as weights, gamma, beta: once a
      // layer's backward ran, everything up to the end of its beta is final.
      let l = layers[layerIndex]
      let end = l.beta + l.outChannels
      if let cb = onGradientsReady, end > readyFrom { cb(readyFrom..<end); readyFrom = end }
    }
    globalAvgPoolBackward(dx: act.exp0, dy: act.dPooled, batch: batch, pixels: last.outSize * last.outSize, channels: C)
    var gOut = act.io0, gIn = act.io1
    let lastBlock = blocks[blocks.count - 1]
    // Every layer's BN backward reductions are made by the kernel that produces its output gradient
    // (fused, see convBNBackward), except the last conv's, whose gradient comes from the pooling.
    Profile.time(.batchNorm, backward: true) {
      batchNormReduce(da: act.exp0, residual: nil, rows: last.outputCount(batch: batch) / C, channels: C,
                      reduction(lastConvIndex, act), scratch: scratch)
    }
    convBNBackward(lastConvIndex, dA: act.exp0, x: UnsafePointer(act.a[lastBlock.project]!), dx: gOut,
                   dxReduce: reduction(lastBlock.project, act), act: act)
    ready(upTo: lastConvIndex)
    for bi in blocks.indices.reversed() {
      let b = blocks[bi]
      let inputLayer = bi == 0 ? stemIndex : blocks[bi - 1].project
      let pendingInput = bi == 0 && stemActivationPending ? pendingBatchNorm(stemIndex, act) : nil
      let x = pendingInput == nil ? UnsafePointer(act.a[inputLayer]!) : UnsafePointer(act.z[inputLayer])
      // The block input's gradient (+ the residual's, added by the same pass) goes to gIn with the
      // reductions of the layer that produced the block input.
      let residual = b.residual ? UnsafePointer(gOut) : nil
      // project (linear): the 1×1 backward writes the depthwise output's gradient (gOut stays for the residual).
      convBNBackward(b.project, dA: gOut, x: UnsafePointer(act.z[b.depthwise]), dx: act.exp1,
                     dxReduce: reduction(b.depthwise, act), input: pendingBatchNorm(b.depthwise, act), act: act)
      ready(upTo: b.project)
      if let e = b.expand {
        // Large expand layers: the depthwise stores P = k·mask(dA) and the expand's backward reads
        // P and x, not z (`pointwiseBackwardScaled`).
        let scaled = pendingInput == nil && takesScaledBackward(e, act)
        // Fused: the depthwise backward hands P group by group to the expand's products, and P is
        // never stored (`ScaledExpandBackwardPass`).
        let pass = scaled && FusedScaledExpandBackward.enabled ? scaledExpandPass(e, depthwise: b.depthwise, x: x, dx: gIn, act: act) : nil
        convBNBackward(b.depthwise, dA: act.exp1, x: UnsafePointer(act.z[e]), dx: act.exp0,
                       dxReduce: scaled ? reduction(e, act).storingScaledGradient() : reduction(e, act),
                       input: pendingBatchNorm(e, act), scaledExpand: pass, act: act)
        ready(upTo: b.depthwise)
        if let pass {
          finishScaledExpand(e, pass, dA: act.exp0, dxReduce: reduction(inputLayer, act), dxResidual: residual, act: act)
        } else if scaled {
          expandBackwardScaled(e, p: act.exp0, x: x, dx: gIn, dxReduce: reduction(inputLayer, act), dxResidual: residual, act: act)
        } else {
          convBNBackward(e, dA: act.exp0, x: x, dx: gIn, dxReduce: reduction(inputLayer, act), dxResidual: residual, act: act)
        }
        ready(upTo: e)
      } else {
        convBNBackward(b.depthwise, dA: act.exp1, x: x, dx: gIn, dxReduce: reduction(inputLayer, act),
                       dxResidual: residual, input: pendingInput, act: act)
        ready(upTo: b.depthwise)
      }
      swap(&gOut, &gIn)
    }
    convBNBackward(stemIndex, dA: gOut, x: UnsafePointer(act.input), dx: nil, act: act)
    ready(upTo: stemIndex)
  }

  /// BN(+ReLU6) backward from dA from the reductions already in act.gradSums[i], then the conv's
  /// backward (the 1×1 and depthwise ones make dz block by block as they read it; the stem's dz is
  /// written in place over dA): weight gradient accumulated, input gradient written to dx (skipped if
  /// nil) plus `dxResidual`, with the reductions `dxReduce` of the layer that produced x made over dx
  /// as it is written.
  private func convBNBackward(_ i: Int, dA: UnsafeMutablePointer<Float>,
                              x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?,
                              dxReduce: BatchNormReduction? = nil, dxResidual: UnsafePointer<Float>? = nil,
                              input: PendingBatchNorm? = nil, scaledExpand: ScaledExpandBackwardPass? = nil,
                              act: Activations) {
    Profile.time(layer: i, backward: true) {
      convBNBackwardSections(i, dA: dA, x: x, dx: dx, dxReduce: dxReduce, dxResidual: dxResidual, input: input,
                             scaledExpand: scaledExpand, act: act)
    }
  }

  private func convBNBackwardSections(_ i: Int, dA: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                                      dx: UnsafeMutablePointer<Float>?, dxReduce: BatchNormReduction?,
                                      dxResidual: UnsafePointer<Float>?, input: PendingBatchNorm?,
                                      scaledExpand: ScaledExpandBackwardPass?, act: Activations) {
    let l = layers[i]
    let n = act.batch
    let xCount = l.inputCount(batch: n)
    // With the input's BN pending, the kernel remakes (and rounds) x from z itself: no rounded copy.
    var xk: UnsafePointer<Float> { input == nil ? kx(x, xCount, act, bf16: bf16Layer(i)) : x }
    switch l.op {
    case .conv(let k) where dx == nil:
      // The stem: its weight gradient only, dz and the patches made block by block (never stored).
      Profile.time(.stemConv, backward: true) {
        withPendingOutputGradient(i, dA: dA, act: act) { pending in
          conv2dWeightGradient(dw: g(l.weight), dy: dA, outputGradient: pending, x: xk, convShape(l, batch: n, kernel: k),
                               scratch: scratch)
        }
      }
    case .conv(let k):
      Profile.time(.batchNorm, backward: true) {
        batchNormBackward(fromSums: act.gradSums[i], dz: dA, da: dA, reduction(i, act), dGamma: g(l.gamma),
                          dBeta: g(l.beta), rows: l.outputCount(batch: n) / l.outChannels, channels: l.outChannels,
                          training: act.mode.batchNormTraining, roundOutputToBF16: roundsOutputGradient(i))
      }
      Profile.time(.stemConv, backward: true) {
        conv2dBackward(dx: dx, dw: g(l.weight), dy: dA, x: xk, w: kw(layer: i),
                       convShape(l, batch: n, kernel: k), scratch: scratch)
      }
    case .depthwise(let k):
      // The depthwise makes its own dz from dA group by group as it reads it (never stored).
      Profile.time(.depthwise, backward: true) {
        withPendingOutputGradient(i, dA: dA, act: act) { pending in
          depthwiseBackward(dx: dx, dw: g(l.weight), dy: dA, x: xk, w: kw(layer: i),
                            depthwiseShape(l, batch: n, kernel: k), scratch: scratch, residual: dxResidual, reduce: dxReduce,
                            input: input, outputGradient: pending, scaledExpand: scaledExpand)
        }
      }
    case .pointwise:
      // The 1×1 backward makes dz block by block from dA as both of its products read it (never stored).
      Profile.time(.pointwise, backward: true) {
        withPendingOutputGradient(i, dA: dA, act: act) { pending in
          let rows = n * l.inSize * l.inSize
          if jit(i) {
            pointwiseBackwardBF16(dx: dx, dw: g(l.weight), dy: dA, x: x, wT: bf16.transposed(l.weight), rows: rows,
                                  scratch: scratch, workspace: bf16.workspace, residual: dxResidual, reduce: dxReduce,
                                  input: input, outputGradient: pending)
          } else {
            pointwiseBackwardBlocks(dx: dx, dw: g(l.weight), dy: dA, outputGradient: pending, x: xk, w: kw(layer: i),
                                    rows: rows, inChannels: l.inChannels, outChannels: l.outChannels, scratch: scratch,
                                    residual: dxResidual, reduce: dxReduce, input: input)
          }
        }
      }
    }
  }

  /// Whether expand layer i's backward takes `pointwiseBackwardScaled`: fp32 on our GEMM kernels, an
  /// output large enough (`ScaledExpandBackward`).
  private func takesScaledBackward(_ i: Int, _ act: Activations) -> Bool {
    let l = layers[i]
    let rows = act.batch * l.inSize * l.inSize
    return !bf16Layer(i) && !bf16Layer(i + 1)
      && ScaledExpandBackward.use(rows: rows, inChannels: l.inChannels, outChannels: l.outChannels)
  }

  /// Expand layer i's backward from P = k·mask(dA) (which the depthwise backward stored in `p`) and x:
  /// dγ, dβ from the reductions, then both products without reading z.
  private func expandBackwardScaled(_ i: Int, p: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                                    dx: UnsafeMutablePointer<Float>, dxReduce: BatchNormReduction,
                                    dxResidual: UnsafePointer<Float>?, act: Activations) {
    let l = layers[i]
    Profile.time(layer: i, backward: true) {
      Profile.time(.pointwise, backward: true) {
        withPendingOutputGradient(i, dA: p, act: act) { pending in
          pointwiseBackwardScaled(dx: dx, dw: g(l.weight), outputGradient: pending, x: x, w: kw(layer: i),
                                  rows: act.batch * l.inSize * l.inSize, inChannels: l.inChannels,
                                  outChannels: l.outChannels, scratch: scratch, residual: dxResidual, reduce: dxReduce)
        }
      }
    }
  }

  /// The fused scaled backward of expand layer e, whose depthwise is layer d: x its input, dx its input
  /// gradient (`ScaledExpandBackwardPass`).
  private func scaledExpandPass(_ e: Int, depthwise d: Int, x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                act: Activations) -> ScaledExpandBackwardPass {
    let l = layers[e], dl = layers[d]
    guard case .depthwise(let k) = dl.op else { preconditionFailure("layer \(d) is not a depthwise") }
    return ScaledExpandBackwardPass(dx: dx, x: x, w: kw(layer: e), rows: act.batch * l.inSize * l.inSize,
                                    inChannels: l.inChannels, outChannels: l.outChannels,
                                    depthwise: depthwiseShape(dl, batch: act.batch, kernel: k))
  }

  /// Expand layer i's backward after the depthwise pass made its products (`pass`): dγ, dβ from the
  /// reductions, then dx's correction pass and dW (dA, the P buffer of the unfused path, is not read).
  private func finishScaledExpand(_ i: Int, _ pass: ScaledExpandBackwardPass, dA: UnsafeMutablePointer<Float>,
                                  dxReduce: BatchNormReduction, dxResidual: UnsafePointer<Float>?, act: Activations) {
    let l = layers[i]
    Profile.time(layer: i, backward: true) {
      Profile.time(.pointwise, backward: true) {
        withPendingOutputGradient(i, dA: dA, act: act) { pending in
          pass.finish(outputGradient: pending, dw: g(l.weight), scratch: scratch, residual: dxResidual, reduce: dxReduce)
        }
      }
    }
  }

  /// Layer i's BN backward from dA (dγ, dβ accumulated) with its apply half pending, for the depthwise
  /// and 1×1 backwards that make dz from it as they read it.
  private func withPendingOutputGradient(_ i: Int, dA: UnsafeMutablePointer<Float>, act: Activations,
                                         _ body: (PendingBatchNormBackward) -> Void) {
    let l = layers[i]
    withBatchNormBackward(fromSums: act.gradSums[i], da: dA, reduction(i, act), dGamma: g(l.gamma), dBeta: g(l.beta),
                          rows: l.outputCount(batch: act.batch) / l.outChannels, channels: l.outChannels,
                          training: act.mode.batchNormTraining, roundOutputToBF16: roundsOutputGradient(i), body)
  }
}


/// The activation arena for one batch size: every buffer forward saves and backward reads,
/// plus the backward scratch buffers, carved out of one allocation.
final class Activations {
  let batch: Int
  let arena: FloatBuffer
  let input: UnsafeMutablePointer<Float>
  let labelStorage: UnsafeMutablePointer<Int32>
  var labels: UnsafeMutablePointer<Int32> { labelStorage }
  /// Per layer: conv output z and activation a; a is nil for expand and depthwise layers, whose
  /// activations are applied by their consumers (the depthwise, the project 1×1) as they read z.
  var z: [UnsafeMutablePointer<Float>] = [], a: [UnsafeMutablePointer<Float>?] = []
  var mean: [UnsafeMutablePointer<Float>] = [], invStd: [UnsafeMutablePointer<Float>] = []
  /// Per layer: the BN scale and shift forward applied ([2·C]: γ·invStd, β − μ·γ·invStd), the shift of
  /// the fused statistics ([C]) and, in double storage, the forward statistics and the backward
  /// reductions ([2·C] each).
  var scaleShift: [UnsafeMutablePointer<Float>] = [], statShift: [UnsafeMutablePointer<Float>] = []
  var statSums: [UnsafeMutablePointer<Double>] = [], gradSums: [UnsafeMutablePointer<Double>] = []
  let doubles: UnsafeMutablePointer<Double>
  let pooled, dropped, dropoutMask, dPooled, logits, dLogits: UnsafeMutablePointer<Float>
  /// Backward scratch: io0/io1 ping-pong block gradients,
  /// exp0/exp1 hold gradients of expanded (inner) tensors.
  let io0, io1, exp0, exp1: UnsafeMutablePointer<Float>
  var features: UnsafePointer<Float>
  var mode = ForwardMode.training

  init(model m: MobileNetV2, batch n: Int) {
    batch = n
    let align = FloatBuffer.alignment / MemoryLayout<Float>.stride
    func rounded(_ c: Int) -> Int { (c + align - 1) / align * align }
    var sizes: [Int] = []
    func reserve(_ c: Int) -> Int { sizes.append(rounded(c)); return sizes.count - 1 }

    let inputSlot = reserve(n * m.config.imageSize * m.config.imageSize * 3)
    var ioMax = 0, expMax = 0
    var layerSlots: [(Int, Int?, Int, Int)] = []
    // Expand and depthwise activations are applied by their consumer as it reads z: never stored.
    let pendingLayers = Set(m.blocks.compactMap(\.expand) + m.blocks.map(\.depthwise)
                            + (m.stemActivationPending ? [m.stemIndex] : []))
    var smallSlots: [(Int, Int)] = []
    var doubleCount = 0
    for (i, l) in m.layers.enumerated() {
      layerSlots.append((reserve(l.outputCount(batch: n)),
                         pendingLayers.contains(i) ? nil : reserve(l.outputCount(batch: n)),
                         reserve(l.outChannels), reserve(l.outChannels)))
      smallSlots.append((reserve(2 * l.outChannels), reserve(l.outChannels)))
      doubleCount += 4 * l.outChannels
      let isBlockIO = i == m.stemIndex || m.blocks.contains { $0.project == i }
      if isBlockIO { ioMax = max(ioMax, l.outputCount(batch: n)) } else { expMax = max(expMax, l.outputCount(batch: n)) }
      if case .depthwise = l.op { expMax = max(expMax, l.inputCount(batch: n)) }
    }
    let C = m.featureDepth, K = m.config.numClasses
    let slots = [n * C, n * C, n * C, n * C, n * K, n * K, ioMax, ioMax, expMax, expMax].map(reserve)
    let labelSlot = reserve(n)  // Int32 and Float have the same size

    var offsets: [Int] = []
    var total = 0
    for s in sizes { offsets.append(total); total += s }
    arena = FloatBuffer(count: total)
    let base = arena.base
    func at(_ slot: Int) -> UnsafeMutablePointer<Float> { base + offsets[slot] }
    input = at(inputSlot)
    for (zS, aS, mS, iS) in layerSlots {
      z.append(at(zS)); a.append(aS.map(at)); mean.append(at(mS)); invStd.append(at(iS))
    }
    doubles = UnsafeMutablePointer<Double>.allocate(capacity: max(doubleCount, 1))
    doubles.initialize(repeating: 0, count: max(doubleCount, 1))
    var d = 0
    for (l, (ssS, shS)) in zip(m.layers, smallSlots) {
      scaleShift.append(at(ssS)); statShift.append(at(shS))
      statSums.append(doubles + d); gradSums.append(doubles + d + 2 * l.outChannels)
      d += 4 * l.outChannels
    }
    pooled = at(slots[0]); dropped = at(slots[1]); dropoutMask = at(slots[2]); dPooled = at(slots[3])
    logits = at(slots[4]); dLogits = at(slots[5])
    io0 = at(slots[6]); io1 = at(slots[7]); exp0 = at(slots[8]); exp1 = at(slots[9])
    labelStorage = UnsafeMutableRawPointer(at(labelSlot)).bindMemory(to: Int32.self, capacity: n)
    features = UnsafePointer(pooled)
  }

  deinit { doubles.deallocate() }
}
