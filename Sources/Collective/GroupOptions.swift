// Options of a process group. Every field says why it exists and what its default is; the
// defaults are documented in docs/distributed.md.
import Common

public struct GroupOptions: Sendable {
  /// Defaults, named so that docs and `--help` texts can quote them.
  public static let defaultConnectTimeout = 300.0
  public static let defaultRunningTimeout = 120.0
  public static let defaultSegmentBytes = 1 << 20
  public static let defaultMaxSegmentBytes = 4 << 20
  public static let defaultPeerMemoryMinBytes = 256 << 10
  /// Seconds without any ZMTP traffic (pings are answered by libzmq's I/O thread, not the
  /// training loop) after which a connection is dropped: a stopped or vanished peer is named
  /// within this time (issue 11: ≤ 15 s). Half the running timeout when that is shorter.
  public static let heartbeatTimeout = 10.0

  /// Seconds to wait for the ring to form (neighbours starting, binding, handshaking). Long,
  /// because on several servers workers start minutes apart (image pulls, slow file systems).
  public var connectTimeout = GroupOptions.defaultConnectTimeout
  /// Seconds a collective waits for a message from its neighbour once the ring runs, and the
  /// heartbeat timeout of a connection. Bounds how long a dead or stopped peer can stall the job;
  /// must exceed the longest imbalance between ranks (a rank-0 checkpoint write, a slow step).
  public var runningTimeout = GroupOptions.defaultRunningTimeout
  /// Smallest bytes per message of the pipelined ring: each message costs two thread wake-ups per
  /// rank (libzmq's I/O thread and ours), which at 8 ranks on 2 cores is CPU the ring lacks. Over
  /// Unix-domain sockets, 1 MiB (up to 4 MiB) against 256 KiB (up to 1 MiB), two paired rounds:
  /// 8 ranks 16/64 MiB 20–35 % less CPU per op (cpu_ms), busbw 0.27–0.32 vs 0.17–0.22 at 16 MiB;
  /// 2 ranks 4–16 MiB 1.1–2.1× busbw, 64 MiB mixed. Tests use a few bytes to exercise the paths.
  public var segmentBytes = GroupOptions.defaultSegmentBytes
  /// Largest bytes per message: large buffers are cut into ~32 segments per chunk up to this size
  /// (fewer, larger messages measured faster from 4 MiB up; see Ring.segmentLength).
  public var maxSegmentBytes = GroupOptions.defaultMaxSegmentBytes
  /// Ring neighbours whose addresses are both loopback (one host by definition) exchange messages
  /// over a Unix-domain socket (libzmq ipc, /tmp/mnv2-ring-UID-HOST-PORT.sock) that each rank binds
  /// beside its TCP listener, which stays: it owns the port (port-in-use errors), and strays still
  /// meet the same authentication on either. Measured: a third of the CPU per byte of TCP loopback,
  /// where the kernel's TCP path was three quarters of an 8-rank allreduce. Off (MNV2_LOCAL_SOCKETS=0)
  /// for ranks that share a network namespace but not /tmp (containers of one pod).
  public var localSockets = true
  /// Neighbours that can read each other's memory (one host, one PID namespace, same user, ptrace
  /// allowed: probed when the ring forms) move allreduce segments by process_vm_readv instead of
  /// the socket: one copy per byte instead of two or three (PeerMemory.swift).
  public var peerMemory = true
  /// Smallest allreduce (bytes) that reads directly: below it the end-of-op token pass (n−1 hops)
  /// costs what the copies save (8 ranks on 2 cores: 64 KiB even, 256 KiB 0.093–0.102 against
  /// 0.070–0.072 GB/s busbw over the socket; 2 ranks even at both). Tests use 0 to exercise the
  /// path with a few bytes.
  public var peerMemoryMinBytes = GroupOptions.defaultPeerMemoryMinBytes
  /// How ranks authenticate each other (see SecurityMode).
  public var security: SecurityMode = .curve
  /// Log every socket-monitor event (debugging liveness; the contract's MNV2_DEBUG_EVENTS).
  public var logMonitorEvents = false
  /// Where warnings (refused connections) go; stderr by default.
  public var log: @Sendable (String) -> Void = { line in writeStderr(line) }

  public init() {}
}
