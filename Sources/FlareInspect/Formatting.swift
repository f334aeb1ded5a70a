import FlareCore
import Foundation

/// Number and table formatting shared by the text outputs.
enum Format {
  /// `%.6g`, or `nan`/`inf`/`-inf`, or `-` when absent.
  static func number(_ value: Double?) -> String {
    guard let value else { return "-" }
    if value.isNaN { return "nan" }
    if value.isInfinite { return value < 0 ? "-inf" : "inf" }
    return String(format: "%.6g", value)
  }

  /// A byte count in binary units, e.g. `86.7 MiB`.
  static func bytes(_ count: Int) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
      value /= 1024
      unit += 1
    }
    return unit == 0 ? "\(count) bytes" : String(format: "%.1f %@", value, units[unit])
  }

  /// `[30522, 384]`.
  static func shape(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
  }

  /// Lays out rows in columns separated by two spaces; `rightAligned` columns are padded on
  /// the left. The last column is never padded on the right.
  static func table(_ rows: [[String]], rightAligned: Set<Int>, indent: String = "  ") -> [String] {
    guard let columns = rows.map(\.count).max() else { return [] }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows {
      for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
    }
    return rows.map { row in
      var line = indent
      for (i, cell) in row.enumerated() {
        let pad = String(repeating: " ", count: widths[i] - cell.count)
        if i > 0 { line += "  " }
        if rightAligned.contains(i) {
          line += pad + cell
        } else {
          line += i == row.count - 1 ? cell : cell + pad
        }
      }
      return line
    }
  }
}
