namespace FastAttention.IO;

/// <summary>What went wrong while reading or writing a tensor file.</summary>
public enum TensorFileErrorKind
{
    /// <summary>The file could not be opened, read or written (missing, no permission, disk full).</summary>
    Io,

    /// <summary>The file is not of the expected format (bad magic bytes, not a zip, not JSON).</summary>
    NotThisFormat,

    /// <summary>The header is malformed: a field is missing, mistyped or unparsable.</summary>
    BadHeader,

    /// <summary>The header is larger than the reader accepts.</summary>
    HeaderTooLarge,

    /// <summary>The element type is not supported, or not the type the caller asked for.</summary>
    UnsupportedType,

    /// <summary>The memory layout is not supported.</summary>
    UnsupportedLayout,

    /// <summary>The shape is invalid, or its element count overflows or exceeds what one array can hold.</summary>
    BadShape,

    /// <summary>The file ends before the data the header promises.</summary>
    Truncated,

    /// <summary>The data length does not match the header (trailing bytes, inconsistent offsets).</summary>
    SizeMismatch,

    /// <summary>The named tensor is not in the file.</summary>
    TensorNotFound,

    /// <summary>The file holds no tensor, or a tensor with no elements where data is required.</summary>
    Empty,
}

/// <summary>
/// The one exception every tensor-file failure raises: it names the kind of failure, the file,
/// the tensor (when the file holds several) and the byte offset at which the problem was found.
/// </summary>
public sealed class TensorFileException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="kind">What went wrong.</param>
    /// <param name="filePath">The file, as the caller named it.</param>
    /// <param name="tensorName">The tensor inside the file, or <see langword="null"/>.</param>
    /// <param name="byteOffset">The byte offset where the problem was found, or -1 when it has none.</param>
    /// <param name="detail">The problem in words.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    public TensorFileException(TensorFileErrorKind kind, string filePath, string? tensorName, long byteOffset, string detail, Exception? inner = null)
        : base(Format(kind, filePath, tensorName, byteOffset, detail), inner)
    {
        Kind = kind;
        FilePath = filePath;
        TensorName = tensorName;
        ByteOffset = byteOffset;
        Detail = detail;
    }

    /// <summary>What went wrong.</summary>
    public TensorFileErrorKind Kind { get; }

    /// <summary>The file, as the caller named it.</summary>
    public string FilePath { get; }

    /// <summary>The tensor inside the file, or <see langword="null"/> for single-tensor files.</summary>
    public string? TensorName { get; }

    /// <summary>The byte offset at which the problem was found, or -1.</summary>
    public long ByteOffset { get; }

    /// <summary>The problem in words, without the file and offset.</summary>
    public string Detail { get; }

    private static string Format(TensorFileErrorKind kind, string filePath, string? tensorName, long byteOffset, string detail)
    {
        string where = filePath;
        if (tensorName is not null)
        {
            where += $" (tensor '{tensorName}')";
        }

        if (byteOffset >= 0)
        {
            where += $" at byte {byteOffset}";
        }

        return $"{where}: {detail} [{kind}]";
    }
}
