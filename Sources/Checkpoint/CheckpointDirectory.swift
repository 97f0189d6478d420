// A train directory's checkpoints, in either format: `model.ckpt-<step>.safetensors` and/or the
// TensorFlow checkpoint `model.ckpt-<step>` (`.index` + `.data-*` shards), newest by step, pruned to
// the newest `keep` steps (every file of a pruned step goes), plus TensorFlow's `checkpoint` state
// file naming the newest TensorFlow checkpoint. Temporary files of interrupted writes
// (`.model.ckpt-….tmp-<pid>`) are never listed and are removed by `prune`.
//
// `resolve` is the one place a user's checkpoint path is interpreted, the TensorFlow way: a file
// (.safetensors, or a bundle's .index / .data-*), a prefix (`dir/model.ckpt-1000`), or a directory
// (its `checkpoint` state file's model_checkpoint_path, else the newest checkpoint of any format).
import Common
import Foundation

public enum CheckpointFormat: String, CaseIterable, Sendable {
  case safetensors, tf, both
  public var writesSafetensors: Bool { self != .tf }
  public var writesTF: Bool { self != .safetensors }
}

public struct CheckpointDirectory {
  public let path: String
  public static let prefix = "model.ckpt-"
  public static let suffix = ".safetensors"
  /// TensorFlow's CheckpointState file (a text proto).
  public static let stateFile = "checkpoint"

  public init(_ path: String) { self.path = path }

  public func file(forStep step: Int64) -> String { "\(prefix(forStep: step))\(Self.suffix)" }
  /// The TensorFlow prefix of a step (`dir/model.ckpt-<step>`).
  public func prefix(forStep step: Int64) -> String { "\(path)/\(Self.prefix)\(step)" }

  /// One step's complete checkpoints: the safetensors file and/or the TensorFlow prefix.
  public struct Entry: Sendable {
    public var step: Int64
    public var safetensors: String?
    public var tfPrefix: String?
    /// What to open: the safetensors file when both exist (it carries the model metadata).
    public var path: String { safetensors ?? tfPrefix! }
  }

  private func names() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] }

  private static func step(of name: String, suffix: String) -> Int64? {
    guard name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
    return Int64(name.dropFirst(prefix.count).dropLast(suffix.count))
  }

  /// Complete checkpoints, oldest first (a TensorFlow one is complete once its .index exists).
  public func checkpoints() -> [Entry] {
    var byStep: [Int64: Entry] = [:]
    for name in names() {
      if let s = Self.step(of: name, suffix: Self.suffix) {
        byStep[s, default: Entry(step: s)].safetensors = "\(path)/\(name)"
      } else if let s = Self.step(of: name, suffix: TFCheckpoint.indexSuffix) {
        byStep[s, default: Entry(step: s)].tfPrefix = prefix(forStep: s)
      }
    }
    return byStep.values.sorted { $0.step < $1.step }
  }

  public func latest() -> String? { checkpoints().last?.path }

  /// Deletes every file of all but the newest `keep` steps, data shards whose index never appeared
  /// and leftovers of interrupted writes, then rewrites the `checkpoint` state file.
  public func prune(keep: Int) throws {
    let all = checkpoints()
    let kept = Set(all.suffix(max(keep, 1)).map(\.step))
    for c in all where !kept.contains(c.step) {
      // The index goes first: without it the TensorFlow checkpoint no longer counts as present.
      if let p = c.tfPrefix { for f in TFCheckpoint.files(prefix: p) { try? FileManager.default.removeItem(atPath: f) } }
      if let s = c.safetensors { try? FileManager.default.removeItem(atPath: s) }
    }
    for n in names() {
      let leftover = n.hasPrefix(".\(Self.prefix)") && n.contains(".tmp-")
      let orphanShard = TFCheckpoint.prefix(ofFile: n).map { n.hasPrefix(Self.prefix) && !n.hasSuffix(TFCheckpoint.indexSuffix)
        && !FileManager.default.fileExists(atPath: "\(path)/\($0)\(TFCheckpoint.indexSuffix)") } ?? false
      if leftover || orphanShard { try? FileManager.default.removeItem(atPath: "\(path)/\(n)") }
    }
    try writeStateFile()
  }

  /// Writes (atomically) TensorFlow's `checkpoint` file for the TensorFlow checkpoints present, with
  /// paths relative to the directory as Saver(save_relative_paths=True) writes them; removes it when
  /// there are none.
  public func writeStateFile() throws {
    let tf = checkpoints().compactMap(\.tfPrefix).map { ($0 as NSString).lastPathComponent }
    let file = "\(path)/\(Self.stateFile)"
    guard let newest = tf.last else {
      if FileManager.default.fileExists(atPath: file) { try? FileManager.default.removeItem(atPath: file) }
      return
    }
    var text = "model_checkpoint_path: \(SafeTensors.jsonString(newest))\n"
    for p in tf { text += "all_model_checkpoint_paths: \(SafeTensors.jsonString(p))\n" }
    let bytes = Array(text.utf8)
    try AtomicFile.write(bytes, to: file)
  }

  /// `model_checkpoint_path` of a `checkpoint` state file (nil when absent or unset).
  public static func stateFileCheckpoint(inDirectory dir: String) throws -> String? {
    let file = "\(dir)/\(stateFile)"
    guard FileManager.default.fileExists(atPath: file) else { return nil }
    guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw CheckpointError("cannot read \(file)") }
    for line in text.split(separator: "\n") {
      let t = line.trimmingCharacters(in: .whitespaces)
      guard t.hasPrefix("model_checkpoint_path:") else { continue }
      let v = t.dropFirst("model_checkpoint_path:".count).trimmingCharacters(in: .whitespaces)
      guard v.count >= 2, v.first == "\"", v.last == "\"" else { throw CheckpointError("\(file): malformed line '\(t)'") }
      return unescape(String(v.dropFirst().dropLast()))
    }
    return nil
  }

  /// Text-proto string unescaping (\" \\ \n \t and octal escapes).
  static func unescape(_ s: String) -> String {
    var out: [UInt8] = []
    let b = Array(s.utf8)
    var i = 0
    while i < b.count {
      if b[i] == UInt8(ascii: "\\"), i + 1 < b.count {
        let c = b[i + 1]
        switch c {
        case UInt8(ascii: "n"): out.append(0x0A); i += 2
        case UInt8(ascii: "t"): out.append(0x09); i += 2
        case UInt8(ascii: "0")...UInt8(ascii: "7"):
          var v = 0, j = i + 1
          while j < min(i + 4, b.count), (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(b[j]) { v = v * 8 + Int(b[j] - 48); j += 1 }
          out.append(UInt8(v & 0xFF)); i = j
        default: out.append(c); i += 2
        }
      } else { out.append(b[i]); i += 1 }
    }
    return String(decoding: out, as: UTF8.self)
  }

  // MARK: Resolving a user's path

  /// Openable checkpoints for a user's path (a safetensors file or a TensorFlow prefix each): the
  /// path itself, or a directory's state-file checkpoint / newest (all of them, oldest first, with
  /// `all`). Errors name the path and what was looked for.
  public static func resolve(_ given: String, all: Bool = false) throws -> [String] {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    if fm.fileExists(atPath: given, isDirectory: &isDir) {
      guard isDir.boolValue else { return [TFCheckpoint.prefix(ofFile: given) ?? given] }
      let dir = CheckpointDirectory(given)
      let found = dir.checkpoints()
      if all {
        guard !found.isEmpty else { throw noCheckpoint(given) }
        return found.map(\.path)
      }
      if let named = try stateFileCheckpoint(inDirectory: given) {
        // Relative paths are relative to the directory; an absolute one from another machine is
        // looked up by its base name here, as a moved train directory needs.
        var candidates = [named.hasPrefix("/") ? named : "\(given)/\(named)"]
        if named.hasPrefix("/") { candidates.append("\(given)/\((named as NSString).lastPathComponent)") }
        for c in candidates { if let p = existingPrefixOrFile(c) { return [p] } }
        throw CheckpointError("\(given)/\(stateFile) names \(named), but neither \(candidates[0]).index nor \(candidates[0])\(suffix) exists")
      }
      guard let last = found.last else { throw noCheckpoint(given) }
      return [last.path]
    }
    if let p = existingPrefixOrFile(given) { return [p] }
    throw CheckpointError("checkpoint path \(given) does not exist (nor \(given).index or \(given)\(suffix))")
  }

  private static func noCheckpoint(_ dir: String) -> CheckpointError {
    CheckpointError("no checkpoint in directory \(dir) (expected \(prefix)<step>\(suffix) or \(prefix)<step>.index)")
  }

  /// A prefix whose .safetensors (preferred: it carries the metadata) or .index exists.
  private static func existingPrefixOrFile(_ p: String) -> String? {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    if fm.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue { return TFCheckpoint.prefix(ofFile: p) ?? p }
    if fm.fileExists(atPath: p + suffix) { return p + suffix }
    if fm.fileExists(atPath: p + TFCheckpoint.indexSuffix) { return p }
    return nil
  }

  /// Opens a path `resolve` returned: a TensorFlow prefix (its .index exists), else safetensors.
  public static func open(_ resolved: String) throws -> TensorFile {
    var isDir: ObjCBool = false
    let isFile = FileManager.default.fileExists(atPath: resolved, isDirectory: &isDir) && !isDir.boolValue
    if !isFile, FileManager.default.fileExists(atPath: resolved + TFCheckpoint.indexSuffix) {
      return try TFCheckpointFile(prefix: resolved)
    }
    return try SafeTensorsFile(path: resolved)
  }
}
