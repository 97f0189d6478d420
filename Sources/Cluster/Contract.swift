// The launcher → worker contract, defined in this one place (horovod/torchrun style): `launch`
// is the only writer of these variables, workers read them once (WorkerContext.fromEnvironment).
// The first five are the Ascend stack's names, so the seed's scripts' habits carry over.

public enum ContractKey: String, CaseIterable, Sendable {
  /// Path of the rank table (absolute).
  case rankTableFile = "RANK_TABLE_FILE"
  /// World size: number of ranks in the table.
  case rankSize = "RANK_SIZE"
  /// This worker's global rank.
  case rankID = "RANK_ID"
  /// This worker's device_id in the table.
  case deviceID = "DEVICE_ID"
  /// Identifies the job; every rank must agree (checked in the handshake).
  case jobID = "JOB_ID"
  /// Rank among the workers of this server, and their number.
  case localRank = "MNV2_LOCAL_RANK"
  case localWorldSize = "MNV2_LOCAL_WORLD_SIZE"
  /// Compute threads for this worker (cores ÷ local workers, at least 1).
  case threads = "MNV2_THREADS"
  /// This rank's log directory (<log dir>/<rank>); the worker may write extra files there.
  case logDir = "MNV2_LOG_DIR"
  /// How many times launch restarted the group (0 on the first start): resume from checkpoints.
  case restartCount = "MNV2_RESTART_COUNT"
  /// Port of rank r when the table gives no device_port: base + r.
  case basePort = "MNV2_BASE_PORT"
  /// The job secret, 64 hex digits. Workers remove it from their environment after reading it.
  case jobSecret = "MNV2_JOB_SECRET"
  /// Alternatively, a file (mode 0600) holding the secret; for workers started without launch.
  case jobSecretFile = "MNV2_JOB_SECRET_FILE"
  /// PID of launch: a worker whose parent is no longer launch exits (no orphans).
  case launcherPID = "MNV2_LAUNCHER_PID"
  /// Addresses of servers whose server_id is a name (launch --server-address), "name=address,…":
  /// devices whose device_ip is not on their host are simulated there (RankTable.placed).
  case serverAddresses = "MNV2_SERVER_ADDRESSES"
  /// Group timeouts in seconds and security mode (see GroupOptions).
  case connectTimeout = "MNV2_CONNECT_TIMEOUT"
  case runningTimeout = "MNV2_RUNNING_TIMEOUT"
  case security = "MNV2_SECURITY"
  /// 0 keeps loopback neighbours on TCP instead of a Unix-domain socket (GroupOptions.localSockets).
  case localSockets = "MNV2_LOCAL_SOCKETS"
  /// 0 keeps allreduce segments on the socket instead of direct reads of a same-host neighbour's
  /// memory (GroupOptions.peerMemory).
  case peerMemory = "MNV2_PEER_MEMORY"
  /// Set (any value) to log every socket-monitor event of the ring (debugging liveness).
  case debugEvents = "MNV2_DEBUG_EVENTS"
  /// Observability (issue 13): where this rank writes its timeline (launch --timeline merges the
  /// ranks' files), and how many steps it records.
  case timelineFile = "MNV2_TIMELINE_FILE"
  case timelineSteps = "MNV2_TIMELINE_STEPS"
}

/// Thread-count variables of the numerical libraries, set to MNV2_THREADS by launch.
public let computeThreadVariables = ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"]

/// Environment for the numerical libraries, set by launch unless the user set it.
/// OpenBLAS's idle threads spin for 2^28 cycles after each GEMM by default, stealing the core from
/// our own kernels that run between GEMMs; 2^4 made the 0.35/96px training step 188 → 250 img/s
/// on 2 threads (it is read once, when the library loads, so it must be in the environment).
public let computeLibraryDefaults = ["OPENBLAS_THREAD_TIMEOUT": "4"]

/// Worker exit status meaning "failed because another rank failed": launch reports a rank that
/// failed for its own reasons as the root cause before ranks that exited with this status.
public let peerFailureExitCode: Int32 = 75

/// Default train and log directory for a world of `n` ranks, like the seed's scripts (result/8p).
public func defaultResultDir(worldSize n: Int) -> String { "result/\(n)p" }
