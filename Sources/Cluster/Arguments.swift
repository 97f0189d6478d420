// Negative numbers as option values. swift-argument-parser reads a token that starts with `-` as
// an option name, so `--learning-rate -0.1` fails with "Missing value" while `--learning-rate=-0.1`
// parses. The executables join an option and a following negative number into the `=` form
// before parsing, so both spellings (and both kebab and snake names) reach the range checks.

public enum Arguments {
  /// `["--x", "-0.1"]` → `["--x=-0.1"]` for every long option followed by a negative number.
  /// Tokens after `--` are left alone when `stopAtTerminator` (launch passes them to workers,
  /// which apply this themselves).
  public static func joiningNegativeNumbers(_ args: [String], stopAtTerminator: Bool = false) -> [String] {
    var out: [String] = []
    var i = 0
    while i < args.count {
      let a = args[i]
      if a == "--" && stopAtTerminator {
        out.append(contentsOf: args[i...])
        break
      }
      if a.hasPrefix("--"), a.count > 2, !a.contains("="), i + 1 < args.count, isNegativeNumber(args[i + 1]) {
        out.append("\(a)=\(args[i + 1])")
        i += 2
        continue
      }
      out.append(a)
      i += 1
    }
    return out
  }

  /// "-1", "-0.5", "-1e-3", "-inf", "-nan": what Int or Double parse with a leading minus.
  public static func isNegativeNumber(_ s: String) -> Bool {
    s.hasPrefix("-") && s.count > 1 && (Int(s) != nil || Double(s) != nil)
  }
}
