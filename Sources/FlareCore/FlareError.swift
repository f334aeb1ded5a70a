/// An error raised by any Flare library while reading, validating or writing a file.
///
/// Shaped like a parser error: a stable ``Code`` that tests compare, a lowercase human message
/// without a trailing period, and where known the file, the tensor or configuration key, and the
/// byte offset.
/// Equality compares only ``code``.
public struct FlareError: Error, Equatable, CustomStringConvertible, Sendable {
  /// A stable identifier; new codes can be added without breaking clients.
  public struct Code: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let name: String
    public init(_ name: String) { self.name = name }
    public init(stringLiteral value: String) { self.name = value }
    public var description: String { name }
  }

  /// The area the error comes from, such as `safetensors` or `io`; printed before the message.
  public var domain: String
  public var code: Code
  public var message: String
  /// The file the error is about, if known.
  public var path: String?
  /// The tensor the error is about, if any.
  public var tensor: String?
  /// The configuration or metadata key the error is about (`hidden_size`, `llama.block_count`),
  /// if any.
  public var key: String?
  /// The absolute byte offset in the file, if known.
  public var offset: Int?

  public init(
    _ domain: String, _ code: Code, _ message: String, path: String? = nil,
    tensor: String? = nil, key: String? = nil, offset: Int? = nil
  ) {
    self.domain = domain
    self.code = code
    self.message = message
    self.path = path
    self.tensor = tensor
    self.key = key
    self.offset = offset
  }

  public static func == (lhs: FlareError, rhs: FlareError) -> Bool { lhs.code == rhs.code }

  /// The same error, attributed to `path` unless it already names a file.
  public func inFile(_ path: String) -> FlareError {
    var copy = self
    // A file inside a staging folder is named as the output it will become.
    if copy.path == nil { copy.path = StagedFolder.outputPath(for: path) }
    return copy
  }

  /// `file: domain error: tensor 'x' message (at byte N)`, or `key 'k'` in place of the tensor
  /// for an error about a configuration key alone (when both are known, the message names the
  /// key).
  public var description: String {
    var text = ""
    if let path { text += "\(path): " }
    text += "\(domain) error: "
    if let tensor {
      text += "tensor '\(tensor.escapedForMessage)' "
    } else if let key {
      text += "key '\(key.escapedForMessage)' "
    }
    text += message
    if let offset { text += " (at byte \(offset))" }
    return text
  }
}

extension FlareError.Code {
  public static let fileNotFound: Self = "fileNotFound"
  public static let ioError: Self = "ioError"
  public static let outputExists: Self = "outputExists"
  public static let unsupported: Self = "unsupported"
  public static let invalidArgument: Self = "invalidArgument"
  /// A name or key appears twice where it must be unique.
  public static let duplicateKey: Self = "duplicateKey"
  /// A tensor name was not found.
  public static let tensorNotFound: Self = "tensorNotFound"
}

extension FlareError {
  /// An I/O failure from a system call, with `errno`'s text.
  public static func io(_ what: String, path: String, errno code: Int32) -> FlareError {
    let reason = String(cString: strerror(code))
    let kind: Code = code == ENOENT ? .fileNotFound : .ioError
    return FlareError("io", kind, "\(what): \(reason.lowercased())", path: path)
  }
}

extension String {
  /// The string with control characters shown as `\u{..}` escapes, safe to print in a message.
  public var escapedForMessage: String {
    var out = ""
    for scalar in unicodeScalars {
      if scalar.value < 0x20 || scalar.value == 0x7F {
        out += "\\u{\(String(scalar.value, radix: 16))}"
      } else {
        out.unicodeScalars.append(scalar)
      }
    }
    return out
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif
