// `report`'s SVG parsed as XML: a panel per quantity, axes with ticks, one polyline per series
// with one point per logged step, eval top-1 when evaluate wrote it.
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Observability
import XCTest

final class CurvesTests: XCTestCase {
  /// Collects the elements of an SVG with their attributes, and the panel each sits in.
  final class Collector: NSObject, XMLParserDelegate {
    var elements: [(name: String, attributes: [String: String], panel: String?)] = []
    var panels: [String?] = [nil]
    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
      if name == "g", let id = attributes["id"], id.hasPrefix("panel-") { panels.append(id) } else if name == "g" { panels.append(panels.last!) }
      elements.append((name, attributes, panels.last!))
    }
    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
      if name == "g" { panels.removeLast() }
    }
  }

  func parse(_ svg: String) throws -> Collector {
    let parser = XMLParser(data: Data(svg.utf8))
    let c = Collector()
    parser.delegate = c
    XCTAssertTrue(parser.parse(), "not well-formed XML: \(String(describing: parser.parserError))")
    return c
  }

  func writeTrainDir(steps: [Int], evalSteps: [Int]) throws -> String {
    let dir = NSTemporaryDirectory() + "curves-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: "\(dir)/eval", withIntermediateDirectories: true)
    var text = ""
    for s in steps {
      text += "{\"epoch\":\(Double(s) / 10),\"ips\":\(1000 + s),\"loss\":\(3.0 / Double(s)),\"lr\":0.1,\"step\":\(s),\"total_loss\":\(3.2 / Double(s)),\"train_accuracy\":\(Double(s) / 100)}\n"
    }
    text += "{\"epoch\":1,\"ips\":"  // a torn last line
    try text.write(toFile: "\(dir)/metrics.jsonl", atomically: true, encoding: .utf8)
    for s in evalSteps {
      try EvalRow(step: s, top1: 0.5, top5: 0.9, loss: 1.2, images: 100, checkpoint: "model.ckpt-\(s).safetensors")
        .append(to: "\(dir)/eval/metrics.jsonl")
    }
    return dir
  }

  func testSVGHasEverySeriesWithOnePointPerStep() throws {
    let dir = try writeTrainDir(steps: Array(stride(from: 10, through: 90, by: 10)), evalSteps: [30, 60, 90])
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let curves = try TrainingCurves.load(trainDir: dir)
    let svg = CurvesSVG.render(curves, title: "test <run>")
    let c = try parse(svg)
    XCTAssertEqual(c.elements.first?.name, "svg")
    XCTAssertEqual(c.elements.first?.attributes["xmlns"], "http://www.w3.org/2000/svg")
    XCTAssertFalse(svg.contains("<script"), "self-contained, no scripts")
    XCTAssertFalse(svg.contains("href"), "no external references")

    let polylines = Dictionary(uniqueKeysWithValues: c.elements.filter { $0.name == "polyline" }.map { ($0.attributes["id"]!, $0) })
    let expected = ["series-loss": 9, "series-total_loss": 9, "series-train_accuracy": 9, "series-learning_rate": 9,
                    "series-images_per_sec": 9, "series-eval_top1": 3]
    XCTAssertEqual(Set(polylines.keys), Set(expected.keys))
    for (id, n) in expected {
      let points = polylines[id]!.attributes["points"]!.split(separator: " ")
      XCTAssertEqual(points.count, n, id)
      XCTAssertEqual(polylines[id]!.attributes["data-points"], String(n), id)
      for p in points {
        let xy = p.split(separator: ",").compactMap { Double($0) }
        XCTAssertEqual(xy.count, 2, "\(id): \(p)")
      }
    }
    // Step increases left to right; loss falls, so its y (downwards) grows.
    let loss = polylines["series-loss"]!.attributes["points"]!.split(separator: " ").map { $0.split(separator: ",").map { Double($0)! } }
    XCTAssertEqual(loss.map { $0[0] }, loss.map { $0[0] }.sorted())
    XCTAssertLessThan(loss.first![1], loss.last![1])
    // Eval top-1 shares the accuracy panel and is marked at each evaluation.
    XCTAssertEqual(polylines["series-eval_top1"]!.panel, "panel-accuracy")
    XCTAssertEqual(c.elements.filter { $0.name == "circle" && $0.panel == "panel-accuracy" }.count, 3)
    // Four panels, each with an x and a y axis with tick labels.
    let panelIDs = Set(c.elements.compactMap(\.panel))
    XCTAssertEqual(panelIDs, ["panel-loss", "panel-accuracy", "panel-learning_rate", "panel-throughput"])
    for p in panelIDs {
      let axes = c.elements.filter { $0.name == "g" && $0.panel == p && ($0.attributes["class"] ?? "").contains("axis") }
      XCTAssertEqual(axes.count, 2, p)
      XCTAssertGreaterThanOrEqual(c.elements.filter { $0.name == "text" && $0.panel == p && $0.attributes["class"] == "tick" }.count, 4, p)
    }
  }

  func testMissingMetricsIsAnErrorNamingTheFile() {
    XCTAssertThrowsError(try TrainingCurves.load(trainDir: "/nonexistent-train-dir")) { e in
      XCTAssertTrue("\(e)".contains("/nonexistent-train-dir/metrics.jsonl"), "\(e)")
    }
  }
}
