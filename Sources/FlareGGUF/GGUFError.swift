import FlareCore

extension FlareError.Code {
  public static let badMagic: Self = "badMagic"
  public static let unsupportedVersion: Self = "unsupportedVersion"
  /// The file ends inside the header, a key/value or a tensor info.
  public static let truncated: Self = "truncated"
  public static let emptyKey: Self = "emptyKey"
  public static let invalidValueType: Self = "invalidValueType"
  public static let invalidBool: Self = "invalidBool"
  public static let invalidString: Self = "invalidString"
  public static let badAlignment: Self = "badAlignment"
  public static let nameTooLong: Self = "nameTooLong"
  public static let duplicateTensor: Self = "duplicateTensor"
  public static let tooManyDims: Self = "tooManyDims"
  public static let elementCountOverflow: Self = "elementCountOverflow"
  public static let invalidTensorType: Self = "invalidTensorType"
  public static let removedTensorType: Self = "removedTensorType"
  public static let blockSizeMismatch: Self = "blockSizeMismatch"
  public static let badOffset: Self = "badOffset"
  public static let dataOutOfRange: Self = "dataOutOfRange"
  public static let stringTooLong: Self = "stringTooLong"
  public static let countTooLarge: Self = "countTooLarge"
}

extension FlareError {
  static func gguf(_ code: Code, _ message: String, tensor: String? = nil, offset: Int? = nil)
    -> FlareError
  {
    FlareError("gguf", code, message, tensor: tensor, offset: offset)
  }
}
