// `evaluate`: top-1/top-5 of one checkpoint, a directory's newest, or all of them (--all).
import ArgumentParser
import Foundation
import Jobs

struct Evaluate: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Score checkpoints on a dataset split.")
  @OptionGroup var flags: EvalFlags
  func run() throws {
    try runReportingFailure("evaluate") { try EvaluateJob.run(flags) }
  }
}
Evaluate.main()
