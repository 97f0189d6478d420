// `evaluate`: top-1/top-5 of one checkpoint, a directory's newest, or all of them (--all).
import ArgumentParser
import Common
import Foundation
import Jobs

struct Evaluate: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Score checkpoints on a dataset split.")
  @OptionGroup var flags: EvalFlags
  func run() throws {
    do { try EvaluateJob.run(flags) } catch {
      // Runtime failures are one line naming the file or tensor, without the usage text.
      writeStderr("evaluate: error: \(error)")
      throw ExitCode.failure
    }
  }
}
Evaluate.main()
