import FlareCore

extension FlareError.Code {
  /// The file is shorter than the 8-byte header length.
  public static let headerTooSmall: Self = "headerTooSmall"
  /// The header length is above the 100,000,000-byte cap.
  public static let headerTooLarge: Self = "headerTooLarge"
  /// `8 + N` exceeds the file size.
  public static let invalidHeaderLength: Self = "invalidHeaderLength"
  /// The header is not valid UTF-8.
  public static let invalidUTF8: Self = "invalidUTF8"
  /// The header is not valid JSON.
  public static let invalidJSON: Self = "invalidJSON"
  /// The header is JSON of the wrong shape (missing or extra fields, wrong types).
  public static let invalidHeader: Self = "invalidHeader"
  /// `__metadata__` holds a value that is not a string.
  public static let invalidMetadata: Self = "invalidMetadata"
  /// A tensor name is empty or holds a control character.
  public static let invalidName: Self = "invalidName"
  /// A dtype name is not one of the format's.
  public static let unknownDType: Self = "unknownDType"
  /// Data offsets overlap, leave a gap, or run backwards.
  public static let invalidOffset: Self = "invalidOffset"
  /// The element or bit count of a shape overflows.
  public static let shapeOverflow: Self = "shapeOverflow"
  /// A sub-byte tensor does not fill a whole number of bytes.
  public static let misalignedSlice: Self = "misalignedSlice"
  /// A tensor's byte range does not match its shape and dtype.
  public static let tensorInvalidInfo: Self = "tensorInvalidInfo"
  /// The data section is longer or shorter than the tensors cover.
  public static let incompleteBuffer: Self = "incompleteBuffer"
  /// A shard index is malformed or disagrees with its shards.
  public static let invalidIndex: Self = "invalidIndex"
}

extension FlareError {
  static func safetensors(
    _ code: Code, _ message: String, tensor: String? = nil, offset: Int? = nil
  ) -> FlareError {
    FlareError("safetensors", code, message, tensor: tensor, offset: offset)
  }
}
