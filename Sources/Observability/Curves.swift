// Training curves without TensorBoard: metrics.jsonl (and eval/metrics.jsonl when `evaluate` wrote
// it) drawn as one self-contained SVG: loss and total loss, train accuracy (and eval top-1), learning
// rate, throughput, each against the global step. No scripts, fonts or external references.
import Common
import Foundation

/// One row `evaluate` appends to `<checkpoint dir>/eval/metrics.jsonl`.
public struct EvalRow: Codable, Sendable, Equatable {
  public static let file = "metrics.jsonl"
  public var step: Int
  public var top1: Double
  public var top5: Double
  public var loss: Double
  public var images: Int
  public var checkpoint: String

  public init(step: Int, top1: Double, top5: Double, loss: Double, images: Int, checkpoint: String) {
    self.step = step; self.top1 = top1; self.top5 = top5; self.loss = loss; self.images = images; self.checkpoint = checkpoint
  }

  /// One whole line per write(2) with O_APPEND (never a torn line in the middle of the file).
  public func append(to path: String) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = .sortedKeys
    var line = try enc.encode(self)
    line.append(0x0A)
    try AppendOnlyFile(path: path).append(line)
  }
}

/// The series of a train dir, by step.
public struct TrainingCurves: Sendable {
  public typealias Series = [(step: Int, value: Double)]
  public var loss: Series = []
  public var totalLoss: Series = []
  public var trainAccuracy: Series = []
  public var learningRate: Series = []
  public var imagesPerSec: Series = []
  public var evalTop1: Series = []

  public init() {}

  /// Reads `<dir>/metrics.jsonl` and, when present, `<dir>/eval/metrics.jsonl`. Lines that do not
  /// parse (a torn last line) are skipped; a step logged twice keeps its last row.
  public static func load(trainDir dir: String) throws -> TrainingCurves {
    let path = (dir as NSString).appendingPathComponent("metrics.jsonl")
    guard FileManager.default.fileExists(atPath: path) else {
      throw ObservabilityError("\(path) does not exist: is \(dir) a train dir (--train-dir)?")
    }
    var c = TrainingCurves()
    let rows = rowsByStep(path)
    if rows.isEmpty { throw ObservabilityError("\(path) holds no logged steps yet") }
    func series(_ key: String) -> Series { rows.compactMap { s, r in (r[key] as? Double).map { (s, $0) } } }
    c.loss = series("loss")
    c.totalLoss = series("total_loss")
    c.trainAccuracy = series("train_accuracy")
    c.learningRate = series("lr")
    c.imagesPerSec = series("ips")
    let evalPath = ((dir as NSString).appendingPathComponent("eval") as NSString).appendingPathComponent(EvalRow.file)
    c.evalTop1 = rowsByStep(evalPath).compactMap { s, r in (r["top1"] as? Double).map { (s, $0) } }
    return c
  }

  static func rowsByStep(_ path: String) -> [(Int, [String: Any])] {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    var byStep: [Int: [String: Any]] = [:]
    for line in data.split(separator: 0x0A) {
      guard let row = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
            let step = (row["step"] as? NSNumber)?.intValue else { continue }
      byStep[step] = row
    }
    return byStep.keys.sorted().map { ($0, byStep[$0]!) }
  }
}

/// The SVG drawing: a 2×2 grid of panels, each with its axes, ticks and series.
public enum CurvesSVG {
  public struct Line {
    public var id: String
    public var label: String
    public var color: String
    public var points: TrainingCurves.Series
    public var markers = false
  }
  public struct Panel {
    public var id: String
    public var title: String
    public var lines: [Line]
  }

  static let panelWidth = 460.0, panelHeight = 300.0, margin = (left: 64.0, right: 16.0, top: 34.0, bottom: 42.0)
  static let columns = 2

  public static func panels(_ c: TrainingCurves) -> [Panel] {
    var accuracy = [Line(id: "train_accuracy", label: "train accuracy", color: "#1f77b4", points: c.trainAccuracy)]
    if !c.evalTop1.isEmpty {
      accuracy.append(Line(id: "eval_top1", label: "eval top-1", color: "#d62728", points: c.evalTop1, markers: true))
    }
    return [
      Panel(id: "loss", title: "loss", lines: [
        Line(id: "loss", label: "loss", color: "#1f77b4", points: c.loss),
        Line(id: "total_loss", label: "total loss", color: "#ff7f0e", points: c.totalLoss)]),
      Panel(id: "accuracy", title: "accuracy", lines: accuracy),
      Panel(id: "learning_rate", title: "learning rate", lines: [
        Line(id: "learning_rate", label: "lr", color: "#2ca02c", points: c.learningRate)]),
      Panel(id: "throughput", title: "throughput (images/s, all ranks)", lines: [
        Line(id: "images_per_sec", label: "images/s", color: "#9467bd", points: c.imagesPerSec)]),
    ]
  }

  public static func render(_ c: TrainingCurves, title: String) -> String {
    let ps = panels(c)
    let rows = (ps.count + columns - 1) / columns
    let width = Double(columns) * panelWidth, height = 40 + Double(rows) * panelHeight
    var out = """
      <?xml version="1.0" encoding="UTF-8"?>
      <svg xmlns="http://www.w3.org/2000/svg" width="\(fmt(width))" height="\(fmt(height))" viewBox="0 0 \(fmt(width)) \(fmt(height))" font-family="sans-serif" font-size="11">
      <rect width="100%" height="100%" fill="white"/>
      <text x="\(fmt(width / 2))" y="24" text-anchor="middle" font-size="15">\(escape(title))</text>

      """
    for (i, p) in ps.enumerated() {
      let x0 = Double(i % columns) * panelWidth, y0 = 40 + Double(i / columns) * panelHeight
      out += panel(p, x0: x0, y0: y0)
    }
    out += "</svg>\n"
    return out
  }

  static func panel(_ p: Panel, x0: Double, y0: Double) -> String {
    let all = p.lines.flatMap(\.points)
    let plotX = x0 + margin.left, plotY = y0 + margin.top
    let plotW = panelWidth - margin.left - margin.right, plotH = panelHeight - margin.top - margin.bottom
    var s = "<g class=\"panel\" id=\"panel-\(p.id)\">\n"
    s += "<text x=\"\(fmt(x0 + panelWidth / 2))\" y=\"\(fmt(y0 + 20))\" text-anchor=\"middle\" font-size=\"13\">\(escape(p.title))</text>\n"
    s += "<rect class=\"frame\" x=\"\(fmt(plotX))\" y=\"\(fmt(plotY))\" width=\"\(fmt(plotW))\" height=\"\(fmt(plotH))\" fill=\"none\" stroke=\"#888\"/>\n"
    guard !all.isEmpty else {
      s += "<text x=\"\(fmt(plotX + plotW / 2))\" y=\"\(fmt(plotY + plotH / 2))\" text-anchor=\"middle\">no data</text>\n</g>\n"
      return s
    }
    let xs = niceRange(Double(all.map(\.step).min()!), Double(all.map(\.step).max()!))
    let ys = niceRange(all.map(\.value).min()!, all.map(\.value).max()!)
    func px(_ v: Double) -> Double { plotX + (v - xs.lo) / (xs.hi - xs.lo) * plotW }
    func py(_ v: Double) -> Double { plotY + plotH - (v - ys.lo) / (ys.hi - ys.lo) * plotH }
    // Axes with ticks and grid lines.
    s += "<g class=\"axis x-axis\">\n"
    for t in xs.ticks {
      s += "<line x1=\"\(fmt(px(t)))\" y1=\"\(fmt(plotY))\" x2=\"\(fmt(px(t)))\" y2=\"\(fmt(plotY + plotH))\" stroke=\"#eee\"/>"
      s += "<text class=\"tick\" x=\"\(fmt(px(t)))\" y=\"\(fmt(plotY + plotH + 14))\" text-anchor=\"middle\">\(label(t))</text>\n"
    }
    s += "<text x=\"\(fmt(plotX + plotW / 2))\" y=\"\(fmt(plotY + plotH + 32))\" text-anchor=\"middle\">step</text>\n</g>\n"
    s += "<g class=\"axis y-axis\">\n"
    for t in ys.ticks {
      s += "<line x1=\"\(fmt(plotX))\" y1=\"\(fmt(py(t)))\" x2=\"\(fmt(plotX + plotW))\" y2=\"\(fmt(py(t)))\" stroke=\"#eee\"/>"
      s += "<text class=\"tick\" x=\"\(fmt(plotX - 6))\" y=\"\(fmt(py(t) + 4))\" text-anchor=\"end\">\(label(t))</text>\n"
    }
    s += "</g>\n"
    for (k, l) in p.lines.enumerated() {
      let pts = l.points.map { "\(fmt(px(Double($0.step)))),\(fmt(py($0.value)))" }.joined(separator: " ")
      s += "<polyline class=\"series\" id=\"series-\(l.id)\" data-points=\"\(l.points.count)\" fill=\"none\" stroke=\"\(l.color)\" stroke-width=\"1.5\" points=\"\(pts)\"/>\n"
      if l.markers {
        for q in l.points { s += "<circle cx=\"\(fmt(px(Double(q.step))))\" cy=\"\(fmt(py(q.value)))\" r=\"3\" fill=\"\(l.color)\"/>" }
        s += "\n"
      }
      // Legend, top right inside the plot.
      let ly = plotY + 14 + Double(k) * 14
      s += "<line x1=\"\(fmt(plotX + plotW - 110))\" y1=\"\(fmt(ly - 4))\" x2=\"\(fmt(plotX + plotW - 92))\" y2=\"\(fmt(ly - 4))\" stroke=\"\(l.color)\" stroke-width=\"2\"/>"
      s += "<text x=\"\(fmt(plotX + plotW - 88))\" y=\"\(fmt(ly))\">\(escape(l.label))</text>\n"
    }
    s += "</g>\n"
    return s
  }

  /// Axis range padded to "nice" ticks (1, 2 or 5 × 10^k), about five of them.
  static func niceRange(_ lo: Double, _ hi: Double) -> (lo: Double, hi: Double, ticks: [Double]) {
    var lo = lo, hi = hi
    if hi - lo < 1e-12 * max(1, abs(hi)) { lo -= max(abs(lo) * 0.1, 0.5); hi += max(abs(hi) * 0.1, 0.5) }
    let raw = (hi - lo) / 5
    let mag = pow(10, floor(log10(raw)))
    let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
    let a = floor(lo / step) * step, b = ceil(hi / step) * step
    var ticks: [Double] = []
    var t = a
    while t <= b + step / 2 { ticks.append(t); t += step }
    return (a, b, ticks)
  }

  static func label(_ v: Double) -> String {
    if v == 0 { return "0" }
    if abs(v) >= 1e5 || abs(v) < 1e-3 { return String(format: "%.0e", v) }
    var s = String(format: "%.4f", v)
    while s.hasSuffix("0") { s.removeLast() }
    if s.hasSuffix(".") { s.removeLast() }
    return s
  }

  static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

  static func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
      .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
  }
}
