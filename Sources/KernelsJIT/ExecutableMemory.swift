// Executable memory for generated code, W^X: a fresh mapping is readable and writable (never
// executable) while the bytes are copied in, then mprotect makes it readable and executable (never
// writable again). Every kernel gets its own page-rounded mapping, so a page that some thread may be
// executing is never made writable to append another kernel. Mappings are kept for the process's
// life (the kernel cache never frees them).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum ExecutableMemory {
  /// Maps `code` as read + execute and returns its address (nil if the OS refuses either step).
  static func install(_ code: [UInt8]) -> UnsafeRawPointer? {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let length = (code.count + page - 1) / page * page
    guard let raw = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
          raw != MAP_FAILED else { return nil }
    code.withUnsafeBytes { raw.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
    guard mprotect(raw, length, PROT_READ | PROT_EXEC) == 0 else {
      munmap(raw, length)
      return nil
    }
    return UnsafeRawPointer(raw)
  }
}
