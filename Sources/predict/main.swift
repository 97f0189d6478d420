// `predict`: the top classes of JPEG images under a checkpoint.
import ArgumentParser
import Common
import Foundation
import Jobs

struct Predict: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Classify JPEG images with a checkpoint.")
  @OptionGroup var flags: PredictFlags
  func run() throws {
    do { try PredictJob.run(flags) } catch {
      // Runtime failures are one line naming the file or tensor, without the usage text.
      writeStderr("predict: error: \(error)")
      throw ExitCode.failure
    }
  }
}
Predict.main()
