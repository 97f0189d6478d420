// Every error the pipeline raises before or during training, each a one-line message that
// names the file (and byte offset or record) so the user can act on it.

public enum DataPipelineError: Error, CustomStringConvertible, Equatable {
  case missingDirectory(String)
  case emptyDirectory(String)
  case noFilesForSplit(split: String, directory: String)
  case labelOutOfRange(label: Int64, numClasses: Int, path: String, record: Int)
  case truncatedRecord(path: String, offset: Int)
  case lengthCRCMismatch(path: String, offset: Int)
  case dataCRCMismatch(path: String, offset: Int)
  case badExample(path: String, record: Int, reason: String)
  case io(path: String, reason: String)
  case badJPEG(String)
  case invalidConfig(String)

  public var description: String {
    switch self {
    case .missingDirectory(let p): return "dataset directory \(p) does not exist"
    case .emptyDirectory(let p):
      return "dataset directory \(p) holds no TFRecord shards (train-*/validation-*) and no class folders of JPEGs"
    case .noFilesForSplit(let s, let d): return "no files for split '\(s)' in \(d)"
    case .labelOutOfRange(let l, let n, let p, let r):
      return "label \(l) of record \(r) in \(p) is outside [0, \(n)) (check --num-classes and --labels-offset)"
    case .truncatedRecord(let p, let o): return "truncated TFRecord in \(p) at byte offset \(o)"
    case .lengthCRCMismatch(let p, let o): return "TFRecord length CRC mismatch in \(p) at byte offset \(o)"
    case .dataCRCMismatch(let p, let o): return "TFRecord data CRC mismatch in \(p) at byte offset \(o)"
    case .badExample(let p, let r, let why): return "record \(r) in \(p) is not a usable tf.train.Example: \(why)"
    case .io(let p, let why): return "\(p): \(why)"
    case .badJPEG(let why): return "JPEG decode failed: \(why)"
    case .invalidConfig(let why): return "invalid data loader configuration: \(why)"
    }
  }
}
