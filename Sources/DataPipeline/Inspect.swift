// `dataset inspect`: what a TFRecord split holds, checking every CRC and Example on the way.
import Foundation

public struct FileReport {
  public var path: String
  public var records: Int
  /// nil when every record's framing, CRCs and Example are good; else the first problem.
  public var problem: String?
  public var labels: [Int64: Int]
}

public enum Inspect {
  public static func file(_ path: String) -> FileReport {
    var report = FileReport(path: path, records: 0, problem: nil, labels: [:])
    do {
      let (records, corruptAt) = try TFRecord.index(path: path, stopAtCorruption: true)
      report.records = records.count
      if let at = corruptAt { report.problem = "framing broken at byte offset \(at) (rest of file unreadable)" }
      let file = try RecordFile(path: path)
      var buffer = [UInt8]()
      for (r, loc) in records.enumerated() {
        do {
          try file.readRecord(loc, into: &buffer)
          report.labels[try ImageExample(serialized: buffer).label, default: 0] += 1
        } catch {
          if report.problem == nil { report.problem = "record \(r): \(error)" }
        }
      }
    } catch {
      report.problem = "\(error)"
    }
    return report
  }
}
