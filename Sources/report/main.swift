// `report`: training curves from a train dir's metrics.jsonl (and eval/metrics.jsonl) as one
// self-contained SVG, for machines without TensorBoard. The drawing is Observability's.
import ArgumentParser
import Foundation
import Observability

struct Report: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Draw loss, accuracy, learning rate and throughput against step as an SVG.",
    discussion: "Example: report --train-dir result/8p --output curves.svg")

  @Option(name: [.customLong("train-dir"), .customLong("train_dir")], help: "The train dir (holds metrics.jsonl).")
  var trainDir: String
  @Option(help: "SVG file to write.")
  var output = "curves.svg"
  @Option(help: "Title (default: the train dir).")
  var title: String?

  func run() throws {
    let curves: TrainingCurves
    do { curves = try TrainingCurves.load(trainDir: trainDir) } catch { throw ValidationError("\(error)") }
    let svg = CurvesSVG.render(curves, title: title ?? "training curves: \(trainDir)")
    try svg.write(toFile: output, atomically: true, encoding: .utf8)
    print("wrote \(output): \(curves.loss.count) logged steps\(curves.evalTop1.isEmpty ? "" : ", \(curves.evalTop1.count) evaluations"), \(svg.utf8.count) bytes")
  }
}

Report.main()
