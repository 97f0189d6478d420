// Every flag is spelled in kebab-case and also accepted in the seed's snake_case.
import ArgumentParser

extension NameSpecification {
  /// `--dataset-dir` and `--dataset_dir`.
  static func seed(_ kebab: String) -> NameSpecification {
    let snake = kebab.replacingOccurrences(of: "-", with: "_")
    return snake == kebab ? [.customLong(kebab)] : [.customLong(kebab), .customLong(snake)]
  }
}
