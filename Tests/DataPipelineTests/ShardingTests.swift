import Foundation
import XCTest
import DataPipeline

final class ShardingTests: XCTestCase {
  /// For several file layouts and world sizes: ranks are disjoint and together cover the split.
  func testDisjointAndCovering() {
    let layouts: [[Int]] = [[10], [3, 3, 3], [5, 1, 7, 2, 9, 4, 4, 6], Array(repeating: 11, count: 16), [0, 4, 0, 2]]
    for counts in layouts {
      let total = counts.reduce(0, +)
      for world in [1, 2, 3, 4, 7, 8] {
        var seen = [Int](repeating: 0, count: total)
        for rank in 0..<world {
          for g in Sharding.globalIndices(counts: counts, rank: rank, worldSize: world).joined() { seen[g] += 1 }
        }
        XCTAssertEqual(seen, [Int](repeating: 1, count: total), "counts \(counts) world \(world)")
      }
    }
  }

  func testByFileWhenEnoughFilesAndBalanced() {
    XCTAssertEqual(Sharding.mode(files: 8, worldSize: 8), .byFile)
    XCTAssertEqual(Sharding.mode(files: 3, worldSize: 8), .byRecord)
    let counts = [100, 90, 80, 70, 60, 50, 40, 30]
    let owned = Sharding.assignFiles(counts: counts, worldSize: 2)
    let loads = owned.map { $0.map { counts[$0] }.reduce(0, +) }
    XCTAssertEqual(loads.reduce(0, +), 520)
    XCTAssertLessThanOrEqual(abs(loads[0] - loads[1]), 30)
    // Whole files: each rank's indices come in contiguous per-file groups.
    let groups = Sharding.globalIndices(counts: counts, rank: 1, worldSize: 2)
    XCTAssertEqual(groups.map(\.count).sorted(), owned[1].map { counts[$0] }.sorted())
  }

  func testEpochOrderIsAPermutationDependingOnlyOnSeedAndEpoch() {
    let sizes = [30, 20, 25, 1]
    let a = Sharding.epochOrder(groupSizes: sizes, seed: 1, epoch: 3, window: 16)
    XCTAssertEqual(a.sorted(), Array(0..<76))
    XCTAssertEqual(a, Sharding.epochOrder(groupSizes: sizes, seed: 1, epoch: 3, window: 16))
    XCTAssertNotEqual(a, Sharding.epochOrder(groupSizes: sizes, seed: 1, epoch: 4, window: 16))
    XCTAssertNotEqual(a, Sharding.epochOrder(groupSizes: sizes, seed: 2, epoch: 3, window: 16))
    XCTAssertNotEqual(a, Array(0..<76))
    // A window of 1 keeps records in file order (only the file order is shuffled).
    let w1 = Sharding.epochOrder(groupSizes: [3, 3], seed: 0, epoch: 0, window: 1)
    XCTAssertTrue(w1 == [0, 1, 2, 3, 4, 5] || w1 == [3, 4, 5, 0, 1, 2], "\(w1)")
  }
}
