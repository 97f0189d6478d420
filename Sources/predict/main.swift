// `predict`: the top classes of JPEG images under a checkpoint.
import ArgumentParser
import Foundation
import Jobs

struct Predict: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Classify JPEG images with a checkpoint.")
  @OptionGroup var flags: PredictFlags
  func run() throws {
    try runReportingFailure("predict") { try PredictJob.run(flags) }
  }
}
Predict.main()
