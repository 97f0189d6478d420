// A train directory's checkpoints: `model.ckpt-<step>.safetensors`, newest by step, pruned to the
// newest `keep`. Temporary files of interrupted writes (`.model.ckpt-….tmp-<pid>`) are never listed
// and are removed by `prune`.
import Foundation

public struct CheckpointDirectory {
  public let path: String
  public static let prefix = "model.ckpt-"
  public static let suffix = ".safetensors"

  public init(_ path: String) { self.path = path }

  public func file(forStep step: Int64) -> String { "\(path)/\(Self.prefix)\(step)\(Self.suffix)" }

  /// Complete checkpoints, oldest first.
  public func checkpoints() -> [(step: Int64, path: String)] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [] }
    return names.compactMap { name -> (Int64, String)? in
      guard name.hasPrefix(Self.prefix), name.hasSuffix(Self.suffix) else { return nil }
      let digits = name.dropFirst(Self.prefix.count).dropLast(Self.suffix.count)
      guard let step = Int64(digits) else { return nil }
      return (step, "\(path)/\(name)")
    }.sorted { $0.0 < $1.0 }
  }

  public func latest() -> String? { checkpoints().last?.path }

  /// Deletes all but the newest `keep` checkpoints and leftovers of interrupted writes.
  public func prune(keep: Int) {
    let all = checkpoints()
    for c in all.dropLast(max(keep, 1)) { try? FileManager.default.removeItem(atPath: c.path) }
    if let names = try? FileManager.default.contentsOfDirectory(atPath: path) {
      for n in names where n.hasPrefix(".\(Self.prefix)") && n.contains(".tmp-") {
        try? FileManager.default.removeItem(atPath: "\(path)/\(n)")
      }
    }
  }

  /// A checkpoint file, or a directory's newest checkpoint (or all of them, oldest first).
  public static func resolve(_ pathOrDir: String, all: Bool = false) throws -> [String] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: pathOrDir, isDirectory: &isDir) else {
      throw CheckpointError("checkpoint path \(pathOrDir) does not exist")
    }
    if !isDir.boolValue { return [pathOrDir] }
    let found = CheckpointDirectory(pathOrDir).checkpoints().map(\.path)
    guard let last = found.last else {
      throw CheckpointError("no \(prefix)<step>\(suffix) checkpoint in directory \(pathOrDir)")
    }
    return all ? found : [last]
  }
}
