// The per-rank loader: this rank's examples, an epoch order that depends only on (seed, epoch),
// a pool of decode threads filling a ring of staging batches ahead of the consumer.
//
// Batch b of an epoch is positions b·B ..< (b+1)·B of the epoch's sequence; position k is
// decoded by whichever thread takes it, with randomness keyed by the example's global index,
// so the output does not depend on the thread count, and `start(epoch:skipBatches:)` resumes
// at any batch exactly.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class DataLoader {
  public let config: LoaderConfig
  public let source: DatasetSource
  /// Examples in the split, over all ranks.
  public let examplesInSplit: Int
  /// Examples this rank owns.
  public let examplesForRank: Int
  /// Batches `next` delivers per epoch on this rank. Training: examplesInSplit / (B·ranks) on
  /// every rank (a rank whose shard is smaller wraps around within its own shard). Evaluation:
  /// ceil(examplesForRank / B), which may differ by one between ranks.
  public let batchesPerEpoch: Int
  public let shardingMode: Sharding.Mode
  public var decodeThreads: Int { state.threadCount }
  private let state: LoaderState

  /// Corrupt JPEGs skipped so far (each warned with file and record).
  public var skippedCorruptImages: Int { state.locked { state.corruptImages } }
  /// Records with bad CRC or Example skipped so far (with `skipCorruptRecords`).
  public var skippedCorruptRecords: Int { state.locked { state.corruptRecords } }

  public init(_ config: LoaderConfig) throws {
    try config.validate()
    self.config = config
    let source = try DatasetSource.detect(directory: config.datasetDir, split: config.split,
                                          backgroundClass: config.backgroundClass)
    self.source = source
    let summaries = try RecordCounts.summaries(of: source, skipCorrupt: config.skipCorruptRecords)
    try DataLoader.checkLabels(summaries, source: source, config: config)
    let counts = summaries.map(\.records)
    examplesInSplit = counts.reduce(0, +)
    if examplesInSplit == 0 { throw DataPipelineError.noFilesForSplit(split: config.split, directory: config.datasetDir) }
    shardingMode = Sharding.mode(files: counts.count, worldSize: config.worldSize)
    let groups = Sharding.globalIndices(counts: counts, rank: config.rank, worldSize: config.worldSize)
    let examples = try DataLoader.locate(groups: groups, counts: counts, source: source, config: config)
    examplesForRank = examples.count
    if config.training {
      batchesPerEpoch = examplesInSplit / (config.batchSize * config.worldSize)
      if batchesPerEpoch == 0 || examples.isEmpty {
        throw DataPipelineError.invalidConfig(
          "split '\(config.split)' in \(config.datasetDir) has \(examplesInSplit) examples, fewer than one global batch of \(config.batchSize * config.worldSize)")
      }
    } else {
      batchesPerEpoch = (examples.count + config.batchSize - 1) / config.batchSize
    }
    state = LoaderState(config: config, source: source, examples: examples, groupSizes: groups.map(\.count),
                        batchesPerEpoch: batchesPerEpoch)
    state.spawnWorkers()
  }

  deinit { state.shutdown() }

  /// Prepares epoch `epoch` and starts decoding from batch `skipBatches` (exact resume).
  public func start(epoch: Int, skipBatches: Int = 0) {
    state.start(epoch: epoch, skipBatches: skipBatches)
  }

  /// Fills the next batch into `images` (B×H×W×3 float32, NHWC, [−1, 1]) and `labels` (B) and
  /// returns how many examples it wrote; 0 at the end of the epoch. Throws on a CRC error or
  /// an out-of-range label (corrupt JPEGs are skipped, never thrown).
  public func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int {
    try state.next(images: images, labels: labels)
  }

  /// Every label of the split, minus the offset, must be in [0, numClasses): checked on the
  /// scanned label ranges so a wrong --num-classes or --labels-offset stops before training.
  static func checkLabels(_ summaries: [FileSummary], source: DatasetSource, config: LoaderConfig) throws {
    for (f, s) in zip(source.files, summaries) {
      for (label, record) in [(s.minLabel, s.minLabelRecord), (s.maxLabel, s.maxLabelRecord)] {
        guard let label = label, let record = record else { continue }
        let l = label - Int64(config.labelsOffset)
        if l < 0 || l >= Int64(config.numClasses) {
          throw DataPipelineError.labelOutOfRange(label: l, numClasses: config.numClasses, path: f.path,
                                                  record: record)
        }
      }
    }
  }

  /// Resolves global indices to record locations (indexing only the files this rank reads).
  static func locate(groups: [[Int]], counts: [Int], source: DatasetSource, config: LoaderConfig) throws -> [ExampleRef] {
    var starts = [Int](), total = 0
    for c in counts { starts.append(total); total += c }
    func fileOf(_ g: Int) -> Int {
      var lo = 0, hi = starts.count - 1
      while lo < hi { let mid = (lo + hi + 1) / 2; if starts[mid] <= g { lo = mid } else { hi = mid - 1 } }
      return lo
    }
    var index = [Int: [RecordLocation]]()
    var out = [ExampleRef]()
    for group in groups {
      for g in group {
        let f = fileOf(g), r = g - starts[f]
        if source.layout == .imageFolder {
          out.append(ExampleRef(file: Int32(f), record: 0, offset: -1, length: source.files[f].size, globalIndex: g))
          continue
        }
        if index[f] == nil {
          index[f] = try TFRecord.index(path: source.files[f].path, stopAtCorruption: config.skipCorruptRecords).records
          if index[f]!.count != counts[f] {
            throw DataPipelineError.io(path: source.files[f].path,
                                       reason: "holds \(index[f]!.count) records, the count cache says \(counts[f]); delete \(RecordCounts.cachePath(directory: source.directory, split: source.split))")
          }
        }
        let loc = index[f]![r]
        out.append(ExampleRef(file: Int32(f), record: Int32(r), offset: loc.offset, length: loc.length, globalIndex: g))
      }
    }
    return out
  }
}

/// One staging batch in the prefetch ring.
final class StagingSlot {
  let images: UnsafeMutablePointer<Float>
  var labels: [Int32]
  var valid: [Bool]
  var done = 0

  init(batch: Int, floatsPerImage: Int) {
    images = .allocate(capacity: batch * floatsPerImage)
    images.initialize(repeating: 0, count: batch * floatsPerImage)
    labels = [Int32](repeating: 0, count: batch)
    valid = [Bool](repeating: false, count: batch)
  }

  deinit { images.deallocate() }
}

/// State shared by the consumer and the decode threads, guarded by `cond`.
final class LoaderState: @unchecked Sendable {
  let config: LoaderConfig
  let source: DatasetSource
  let examples: [ExampleRef]
  let groupSizes: [Int]
  let batchesPerEpoch: Int
  let threadCount: Int
  let floatsPerImage: Int
  /// Training only: how many following examples of the epoch order stand in for a corrupt one.
  static let maxSubstitutes = 8
  /// Warnings printed per loader before they are only counted.
  static let maxWarnings = 50

  let cond = NSCondition()
  var slots: [StagingSlot]
  var running = true
  var started = false
  var generation = 0
  var epoch = 0
  var order: [Int] = []
  var nextPosition = 0
  var endPosition = 0
  var consumeBatch = 0
  var inFlight = 0
  var failure: Error?
  var corruptImages = 0
  var corruptRecords = 0
  var warnings = 0
  /// The consumer's own decode tools, used only by the thread that calls `next`.
  lazy var consumerContext = DecodeContext(config.preprocessOptions)

  init(config: LoaderConfig, source: DatasetSource, examples: [ExampleRef], groupSizes: [Int], batchesPerEpoch: Int) {
    self.config = config
    self.source = source
    self.examples = examples
    self.groupSizes = groupSizes
    self.batchesPerEpoch = batchesPerEpoch
    threadCount = config.resolvedDecodeThreads
    floatsPerImage = config.imageSize * config.imageSize * 3
    slots = (0..<config.prefetchBatches).map { _ in StagingSlot(batch: config.batchSize, floatsPerImage: config.imageSize * config.imageSize * 3) }
  }

  func locked<T>(_ body: () throws -> T) rethrows -> T {
    cond.lock(); defer { cond.unlock() }
    return try body()
  }

  func label(_ stored: Int64, ref: ExampleRef) throws -> Int32 {
    let l = stored - Int64(config.labelsOffset)
    if l < 0 || l >= Int64(config.numClasses) {
      throw DataPipelineError.labelOutOfRange(label: l, numClasses: config.numClasses,
                                              path: source.files[Int(ref.file)].path, record: Int(ref.record))
    }
    return Int32(l)
  }

  func spawnWorkers() {
    for i in 0..<threadCount {
      let t = Thread { [self] in self.workerLoop(index: i) }
      t.name = "decode-\(i)"
      t.start()
    }
  }

  func shutdown() {
    locked { running = false }
    cond.broadcast()
  }

  func start(epoch: Int, skipBatches: Int) {
    cond.lock()
    generation += 1
    while inFlight > 0 { cond.wait() }
    self.epoch = epoch
    if config.training {
      let window = source.layout == .imageFolder ? examples.count : config.shuffleWindow
      order = Sharding.epochOrder(groupSizes: groupSizes, seed: config.seed, epoch: epoch, window: window)
      endPosition = batchesPerEpoch * config.batchSize
    } else {
      order = Array(examples.indices)
      endPosition = examples.count
    }
    consumeBatch = min(max(0, skipBatches), batchesPerEpoch)
    nextPosition = min(consumeBatch * config.batchSize, endPosition)
    for s in slots { s.done = 0 }
    failure = nil
    started = true
    cond.unlock()
    cond.broadcast()
  }

  func rows(ofBatch b: Int) -> Int { min(config.batchSize, endPosition - b * config.batchSize) }

  func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int {
    cond.lock()
    guard started else {
      cond.unlock()
      throw DataPipelineError.invalidConfig("call start(epoch:skipBatches:) before next")
    }
    let b = consumeBatch
    if b >= batchesPerEpoch { cond.unlock(); return 0 }
    let slot = slots[b % slots.count], need = rows(ofBatch: b)
    // The consumer decodes the batch's unclaimed positions itself rather than wait: the decode
    // threads run only on idle cores (SCHED_IDLE), so a busy machine cannot starve the step.
    while slot.done < need && failure == nil {
      if nextPosition < b * config.batchSize + need {
        let c = claim()
        cond.unlock()
        let outcome = decode(c, with: consumerContext)
        cond.lock()
        complete(c, outcome)
      } else {
        cond.wait()
      }
    }
    if let f = failure { cond.unlock(); throw f }
    cond.unlock()
    // The slot is not reused until consumeBatch moves on, so copy without the lock.
    var written = 0
    for row in 0..<need where slot.valid[row] {
      (images + written * floatsPerImage).update(from: slot.images + row * floatsPerImage, count: floatsPerImage)
      labels[written] = slot.labels[row]
      written += 1
    }
    cond.lock()
    slot.done = 0
    consumeBatch += 1
    cond.unlock()
    cond.broadcast()
    return written
  }

  func workerLoop(index: Int) {
    nameKernelThread("decode-\(index)")
    lowerDecodePriority()
    let context = DecodeContext(config.preprocessOptions)
    cond.lock()
    while true {
      while running && !(started && nextPosition < endPosition
                         && nextPosition / config.batchSize < consumeBatch + slots.count) {
        cond.wait()
      }
      if !running { break }
      let c = claim()
      cond.unlock()
      let outcome = decode(c, with: context)
      cond.lock()
      complete(c, outcome)
    }
    cond.unlock()
  }

  /// What one thread owns to decode: its preprocessor (scratch buffers), read buffer and open file.
  final class DecodeContext {
    let pre: Preprocessor
    var buffer = [UInt8]()
    var openFile: (index: Int32, file: RecordFile)?
    init(_ options: PreprocessOptions) { pre = Preprocessor(options: options) }
  }

  /// A position taken for decoding, with the epoch state it was taken under.
  struct Claim {
    let position: Int
    let generation: Int
    let epoch: Int
    let order: [Int]
  }

  /// Takes the next position (call with the lock held).
  func claim() -> Claim {
    let c = Claim(position: nextPosition, generation: generation, epoch: epoch, order: order)
    nextPosition += 1
    inFlight += 1
    return c
  }

  /// Decodes a claimed position into its staging row, standing in the following examples for a
  /// corrupt one when training (call without the lock).
  func decode(_ c: Claim, with context: DecodeContext) -> Outcome {
    let row = c.position % config.batchSize
    let slot = slots[(c.position / config.batchSize) % slots.count]
    var outcome = Outcome()
    let attempts = config.training ? LoaderState.maxSubstitutes + 1 : 1
    for attempt in 0..<attempts {
      let ref = examples[c.order[(c.position + attempt) % c.order.count]]
      if produce(ref, epoch: c.epoch, pre: context.pre, buffer: &context.buffer, openFile: &context.openFile,
                 into: slot.images + row * floatsPerImage, outcome: &outcome) { break }
      if outcome.error != nil { break }
    }
    return outcome
  }

  /// Records a decoded position, unless `start` began another epoch meanwhile (call with the lock held).
  func complete(_ c: Claim, _ outcome: Outcome) {
    inFlight -= 1
    if c.generation == generation {
      let row = c.position % config.batchSize
      let slot = slots[(c.position / config.batchSize) % slots.count]
      slot.valid[row] = outcome.label != nil
      slot.labels[row] = outcome.label ?? -1
      slot.done += 1
      corruptImages += outcome.corruptImages
      corruptRecords += outcome.corruptRecords
      if failure == nil, let e = outcome.error { failure = e }
    }
    cond.broadcast()
  }

  struct Outcome {
    var label: Int32?
    var corruptImages = 0
    var corruptRecords = 0
    var error: Error?
  }

  /// Reads, parses and decodes one example into `dst`. Returns true on success; on a skippable
  /// problem counts it and returns false; on a fatal one sets `outcome.error`.
  func produce(_ ref: ExampleRef, epoch: Int, pre: Preprocessor, buffer: inout [UInt8],
               openFile: inout (index: Int32, file: RecordFile)?, into dst: UnsafeMutablePointer<Float>,
               outcome: inout Outcome) -> Bool {
    let path = source.files[Int(ref.file)].path
    let labelValue: Int32
    var jpeg: Data?  // the Example's image bytes; nil for an image file (then in `buffer`)
    do {
      if openFile?.index != ref.file { openFile = (ref.file, try RecordFile(path: path)) }
      let file = openFile!.file
      if ref.offset < 0 {
        try file.readRaw(into: &buffer, count: file.size, at: 0)
        labelValue = try label(Int64(source.imageLabels[Int(ref.file)]), ref: ref)
      } else {
        try file.readRecord(RecordLocation(offset: ref.offset, length: ref.length), into: &buffer)
        let example: ImageExample
        do { example = try ImageExample(serialized: buffer) } catch {
          throw DataPipelineError.badExample(path: path, record: Int(ref.record), reason: "\(error)")
        }
        labelValue = try label(example.label, ref: ref)
        jpeg = example.encoded
      }
    } catch let e as DataPipelineError {
      switch e {
      case .dataCRCMismatch, .badExample, .truncatedRecord:
        if config.skipCorruptRecords {
          outcome.corruptRecords += 1
          note("skipping corrupt record: \(e)")
        } else {
          outcome.error = e
        }
      default:
        outcome.error = e
      }
      return false
    } catch {
      outcome.error = error
      return false
    }
    var rng = ExampleRandom(seed: config.seed, epoch: epoch, stream: .augment, index: ref.globalIndex)
    do {
      if let jpeg = jpeg {
        try jpeg.withUnsafeBytes { _ = try pre.process(jpeg: $0, rng: &rng, into: dst) }
      } else {
        try buffer.withUnsafeBytes { _ = try pre.process(jpeg: $0, rng: &rng, into: dst) }
      }
    } catch {
      outcome.corruptImages += 1
      note("skipping corrupt JPEG in \(path) record \(ref.record): \(error)")
      return false
    }
    outcome.label = labelValue
    return true
  }

  func note(_ message: String) {
    let show = locked { () -> Bool in warnings += 1; return warnings <= LoaderState.maxWarnings }
    if show { warn(message) }
  }
}

/// How decode threads yield the cores to the compute threads. They work ahead of the step through
/// the staging ring, so a few milliseconds' delay costs nothing, while a compute thread preempted by
/// a decode mid-region stalls every thread of the region (1 rank × 2 threads lost 8–20 % to
/// 2 ranks × 1 thread that way, at nice +10 still ~8 %). Linux's SCHED_IDLE runs them only on a
/// core nothing else wants; the consumer decodes whatever they have not reached when it needs it,
/// so they cannot starve the step. MNV2_DECODE_SCHED=normal keeps them SCHED_OTHER at nice
/// +`decodeNice` (MNV2_DECODE_NICE overrides), the policy before SCHED_IDLE.
let decodeNice: Int32 = 10

/// Names the calling thread for top -H and /proc (Foundation keeps Thread.name to itself, and
/// Glibc's pthread_setname_np is not visible to Swift). Best effort.
func nameKernelThread(_ name: String) {
  #if os(Linux)
  let fd = open("/proc/thread-self/comm", O_WRONLY)
  guard fd >= 0 else { return }
  _ = name.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, strlen($0.baseAddress!)) }
  close(fd)
  #endif
}

/// Linux's SCHED_IDLE (sched.h; Glibc does not export it to Swift).
let schedIdlePolicy: Int32 = 5

func lowerDecodePriority() {
  #if os(Linux)
  let env = ProcessInfo.processInfo.environment
  if env["MNV2_DECODE_SCHED"] != "normal" {
    // pid 0 names the calling thread; entering SCHED_IDLE needs no privilege.
    var param = sched_param(sched_priority: 0)
    if sched_setscheduler(0, schedIdlePolicy, &param) == 0 { return }
  }
  let nice = env["MNV2_DECODE_NICE"].flatMap { Int32($0) } ?? decodeNice
  // Linux's nice is per thread, and who = 0 names the calling thread (not the whole process);
  // lowering one's own priority needs no privilege.
  _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice)
  #endif
}
