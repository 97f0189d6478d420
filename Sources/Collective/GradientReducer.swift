// Gradient fusion with overlap (Horovod's tensor fusion, the Ascend `hcom_parallel` option):
// backward reports consecutive ranges of the flat gradient slab as they become final; they are
// cut into fixed buckets of `bucketBytes` (same boundaries on every rank, whatever the ranges),
// and each full bucket is averaged on a communication thread while backward computes the rest.

import Foundation
import Telemetry

public final class GradientReducer {
  /// 4 MiB: large enough that per-collective latency (2(n−1) message hops) is amortized, small
  /// enough that the first bucket starts while most of backward is still ahead.
  public static let defaultBucketBytes = 4 << 20

  private let group: ProcessGroup
  private let buffer: UnsafeMutablePointer<Float>
  private let count: Int
  private let bucketElements: Int
  private let overlap: Bool
  private let wire: GradientWire
  private let worker: CommunicationThread?
  private var readyUpTo = 0
  private var submittedUpTo = 0
  private var deferred: [Range<Int>] = []
  private var deferredTraces: [(timeline: Timeline, args: [String: Int])?] = []
  private var bucketIndex = 0
  /// When set, each bucket's allreduce is a span (on the communication thread's track when overlapped).
  public var timeline: Timeline?

  /// `buffer[0..<count]` is averaged over the group at every `finish()`.
  public init(group: ProcessGroup, buffer: UnsafeMutablePointer<Float>, count: Int,
              bucketBytes: Int = GradientReducer.defaultBucketBytes, overlap: Bool = true, fp16: Bool = false,
              wire: GradientWire? = nil) {
    self.group = group
    self.buffer = buffer
    self.count = count
    self.bucketElements = max(1, bucketBytes / MemoryLayout<Float>.stride)
    self.overlap = overlap && group.size > 1
    self.wire = wire ?? (fp16 ? .fp16 : .fp32)
    worker = self.overlap ? CommunicationThread() : nil
  }

  deinit { worker?.stop() }

  /// Called from backward (one thread), with ranges consecutive from 0 upwards.
  public func ready(_ range: Range<Int>) {
    precondition(range.lowerBound == readyUpTo && range.upperBound <= count,
                 "gradient ranges must be consecutive from the front: got \(range) after \(readyUpTo)")
    readyUpTo = range.upperBound
    while readyUpTo - submittedUpTo >= bucketElements {
      submit(submittedUpTo..<(submittedUpTo + bucketElements))
    }
  }

  /// Reduces what is left, waits for every bucket, and rearms for the next step. Afterwards the
  /// whole buffer holds the average over ranks (gradients never reported are taken as final now).
  public func finish() throws {
    if submittedUpTo < count { submit(submittedUpTo..<count) }
    readyUpTo = 0
    submittedUpTo = 0
    bucketIndex = 0
    if let worker {
      try worker.waitForAll()
    } else {
      let buckets = deferred, traces = deferredTraces
      deferred.removeAll(keepingCapacity: true)
      deferredTraces.removeAll(keepingCapacity: true)
      for (b, t) in zip(buckets, traces) { try reduce(b, traced: t) }
    }
  }

  private func submit(_ bucket: Range<Int>) {
    submittedUpTo = bucket.upperBound
    guard group.size > 1 else { return }
    // Decided on the loop's thread, where the timeline's step lives.
    let traced = timeline.flatMap { $0.isRecording ? (timeline: $0, args: ["step": $0.step, "bucket": bucketIndex,
                                                                           "bytes": bucket.count * MemoryLayout<Float>.stride]) : nil }
    bucketIndex += 1
    if let worker {
      worker.enqueue { [self] in try reduce(bucket, traced: traced, track: .communication) }
    } else {
      deferred.append(bucket)
      deferredTraces.append(traced)
    }
  }
  private func reduce(_ bucket: Range<Int>, traced: (timeline: Timeline, args: [String: Int])? = nil,
                      track: Timeline.Track = .compute) throws {
    let t0 = traced == nil ? 0 : Timeline.now()
    try group.allreduceAverage(buffer + bucket.lowerBound, count: bucket.count, wire: wire)
    if let traced { traced.timeline.record(Timeline.Name.allreduce, track: track, start: t0, end: Timeline.now(), args: traced.args) }
  }
}

/// One long-lived thread running submitted jobs in order; the first error is kept and reported.
final class CommunicationThread: @unchecked Sendable {
  private let cond = NSCondition()
  private var jobs: [() throws -> Void] = []
  private var running = false
  private var stopping = false
  private var firstError: Error?

  init() {
    let t = Thread { [self] in loop() }
    t.name = "allreduce"
    t.start()
  }

  func enqueue(_ job: @escaping () throws -> Void) {
    cond.lock()
    jobs.append(job)
    cond.broadcast()
    cond.unlock()
  }

  /// Waits until the queue is empty and idle; throws (and clears) the first error of the batch.
  func waitForAll() throws {
    cond.lock()
    while !jobs.isEmpty || running { cond.wait() }
    let e = firstError
    firstError = nil
    cond.unlock()
    if let e { throw e }
  }

  func stop() {
    cond.lock()
    stopping = true
    cond.broadcast()
    cond.unlock()
  }

  private func loop() {
    cond.lock()
    while true {
      while jobs.isEmpty && !stopping { cond.wait() }
      if jobs.isEmpty && stopping { break }
      let job = jobs.removeFirst()
      running = true
      let skip = firstError != nil
      cond.unlock()
      var error: Error?
      if !skip { do { try job() } catch let e { error = e } }
      cond.lock()
      running = false
      if firstError == nil, let error { firstError = error }
      cond.broadcast()
    }
    cond.unlock()
  }
}
