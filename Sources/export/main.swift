// `export`: write a checkpoint as an ONNX model for deployment.
import ArgumentParser
import Foundation
import Jobs

struct Export: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Export a checkpoint for deployment (ONNX).")
  @OptionGroup var flags: ExportFlags
  func run() throws {
    do { try ExportJob.run(flags) } catch {
      // Runtime failures are one line naming the file or tensor, without the usage text.
      FileHandle.standardError.write(Data("export: error: \(error)\n".utf8))
      throw ExitCode.failure
    }
  }
}
Export.main()
