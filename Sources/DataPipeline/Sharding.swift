// Which examples each rank reads, and in which order each epoch.
//
// Ranks get whole files when there are at least as many files as ranks (files balanced by
// record count, largest first onto the least-loaded rank), otherwise every world-size-th
// record. Either way the ranks' sets are disjoint and together cover the split.

/// One example: its file, where it sits, and its global index in the split (the position in
/// the concatenation of all files in name order), which keys its augmentation randomness.
public struct ExampleRef: Equatable, Sendable {
  public var file: Int32
  public var record: Int32          // index of the record within its file
  public var offset: Int            // TFRecord header offset (−1 for a whole image file)
  public var length: Int
  public var globalIndex: Int
}

public enum Sharding {
  public enum Mode: String, Sendable { case byFile, byRecord }

  public static func mode(files: Int, worldSize: Int) -> Mode { files >= worldSize ? .byFile : .byRecord }

  /// Files assigned to each rank (by-file mode): greedy balance on record counts, ties to the
  /// lower file / rank index, so every rank computes the same assignment.
  public static func assignFiles(counts: [Int], worldSize: Int) -> [[Int]] {
    var load = [Int](repeating: 0, count: worldSize)
    var owned = [[Int]](repeating: [], count: worldSize)
    let order = counts.indices.sorted { counts[$0] != counts[$1] ? counts[$0] > counts[$1] : $0 < $1 }
    for f in order {
      var best = 0
      for r in 1..<max(1, worldSize) where load[r] < load[best] { best = r }
      owned[best].append(f)
      load[best] += counts[f]
    }
    return owned.map { $0.sorted() }
  }

  /// Global indices of the examples of `rank` (as groups per file, in file order).
  public static func globalIndices(counts: [Int], rank: Int, worldSize: Int) -> [[Int]] {
    var starts = [Int](), total = 0
    for c in counts { starts.append(total); total += c }
    switch mode(files: counts.count, worldSize: worldSize) {
    case .byFile:
      return assignFiles(counts: counts, worldSize: worldSize)[rank].map { f in Array(starts[f]..<(starts[f] + counts[f])) }
    case .byRecord:
      return counts.indices.map { f in (starts[f]..<(starts[f] + counts[f])).filter { $0 % worldSize == rank } }
        .filter { !$0.isEmpty }
    }
  }

  /// The training order of one epoch: file groups shuffled, concatenated, then shuffled within
  /// windows of `window` examples (a shuffle buffer whose result depends only on seed and
  /// epoch). Indices refer to positions in the flattened `groups`.
  public static func epochOrder(groupSizes: [Int], seed: UInt64, epoch: Int, window: Int) -> [Int] {
    var starts = [Int](), total = 0
    for c in groupSizes { starts.append(total); total += c }
    var groupOrder = Array(groupSizes.indices)
    var rng = ExampleRandom(seed: seed, epoch: epoch, stream: .fileOrder)
    rng.shuffle(&groupOrder, range: groupOrder.indices)
    var order = [Int]()
    order.reserveCapacity(total)
    for g in groupOrder { order.append(contentsOf: starts[g]..<(starts[g] + groupSizes[g])) }
    let w = max(1, window)
    var lo = 0, k = 0
    while lo < order.count {
      let hi = min(order.count, lo + w)
      var wr = ExampleRandom(seed: seed, epoch: epoch, stream: .shuffle, index: k)
      wr.shuffle(&order, range: lo..<hi)
      lo = hi; k += 1
    }
    return order
  }
}
