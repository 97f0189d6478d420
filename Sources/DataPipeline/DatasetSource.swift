// Finding a split's examples in a directory: TF-slim TFRecord shards (`train-*`,
// `validation-*`) or a folder of JPEGs (`root/<class>/*.jpg`, or `root/<split>/<class>/*.jpg`).
import Foundation

public enum DatasetLayout: String, Sendable {
  case tfrecord, imageFolder
}

/// One input file with what identifies its version (for the count cache).
public struct SourceFile: Equatable, Sendable, Codable {
  public var path: String
  public var size: Int
  public var mtime: Double
}

public struct DatasetSource: Sendable {
  public let directory: String
  public let split: String
  public let layout: DatasetLayout
  /// TFRecord shards of the split, sorted by name; for an image folder, the images in order
  /// (classes sorted by name, files sorted within a class).
  public let files: [SourceFile]
  /// Image folder only: label of each file in `files`, and the sorted class names.
  public let imageLabels: [Int]
  public let classNames: [String]

  static let imageExtensions: Set<String> = ["jpg", "jpeg"]

  /// Detects the layout of `directory` and lists the files of `split`. For an image folder
  /// labels are 0…K−1 in sorted class-name order, or 1…K when `backgroundClass` reserves 0.
  public static func detect(directory: String, split: String, backgroundClass: Bool = false) throws -> DatasetSource {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
      throw DataPipelineError.missingDirectory(directory)
    }
    let entries = (try? fm.contentsOfDirectory(atPath: directory))?.sorted() ?? []
    let shards = entries.filter(isShardName)
    if !shards.isEmpty {
      let mine = shards.filter { $0.hasPrefix(split + "-") }
      if mine.isEmpty { throw DataPipelineError.noFilesForSplit(split: split, directory: directory) }
      return DatasetSource(directory: directory, split: split, layout: .tfrecord,
                           files: try mine.map { try sourceFile((directory as NSString).appendingPathComponent($0)) },
                           imageLabels: [], classNames: [])
    }
    // Image folder: prefer root/<split>/, else the root itself holds the classes (train only:
    // evaluating on the training images by accident would report a meaningless accuracy).
    let splitDir = (directory as NSString).appendingPathComponent(split)
    var root = directory
    if fm.fileExists(atPath: splitDir, isDirectory: &isDir), isDir.boolValue {
      root = splitDir
    } else if entries.contains(where: { ["train", "validation"].contains($0) }) || split != "train" {
      if classFolders(directory).isEmpty { throw DataPipelineError.emptyDirectory(directory) }
      throw DataPipelineError.noFilesForSplit(split: split, directory: directory)
    }
    let classes = classFolders(root)
    if classes.isEmpty {
      throw root == directory ? DataPipelineError.emptyDirectory(directory)
        : DataPipelineError.noFilesForSplit(split: split, directory: directory)
    }
    var files = [SourceFile](), labels = [Int]()
    for (k, (name, images)) in classes.enumerated() {
      _ = name
      for image in images {
        files.append(try sourceFile(image))
        labels.append(k + (backgroundClass ? 1 : 0))
      }
    }
    return DatasetSource(directory: directory, split: split, layout: .imageFolder, files: files,
                         imageLabels: labels, classNames: classes.map { $0.0 })
  }

  /// slim's names: `<split>-00000-of-01024`; any `<name>-<digits>-of-<digits>` counts.
  static func isShardName(_ name: String) -> Bool {
    let parts = name.split(separator: "-")
    guard parts.count >= 4 else { return false }
    let n = parts.count
    return parts[n - 2] == "of" && parts[n - 1].allSatisfy(\.isNumber) && parts[n - 3].allSatisfy(\.isNumber)
  }

  /// Sorted (class name, sorted JPEG paths) of the subfolders of `root` that hold JPEGs.
  static func classFolders(_ root: String) -> [(String, [String])] {
    let fm = FileManager.default
    var result = [(String, [String])]()
    for name in ((try? fm.contentsOfDirectory(atPath: root)) ?? []).sorted() where !name.hasPrefix(".") {
      let path = (root as NSString).appendingPathComponent(name)
      var isDir: ObjCBool = false
      guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { continue }
      let images = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted()
        .filter { imageExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
        .map { (path as NSString).appendingPathComponent($0) }
      if !images.isEmpty { result.append((name, images)) }
    }
    return result
  }

  static func sourceFile(_ path: String) throws -> SourceFile {
    let attrs = try FileManager.default.attributesOfItem(atPath: path)
    let size = (attrs[.size] as? NSNumber)?.intValue ?? 0
    let mtime = (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
    return SourceFile(path: path, size: size, mtime: mtime)
  }
}
