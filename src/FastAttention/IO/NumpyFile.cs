using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace FastAttention.IO;

/// <summary>
/// NumPy <c>.npy</c> files (format versions 1, 2 and 3). Reads float16/32/64 and integer arrays,
/// little- or big-endian, C or Fortran order (converted to C order); writes little-endian C order.
/// Files are treated as untrusted: the header is capped, the shape arithmetic is checked and the data
/// length must match the header exactly.
/// </summary>
public static partial class NumpyFile
{
    /// <summary>The largest header the reader accepts (NumPy itself writes headers of a few hundred bytes).</summary>
    public const int MaxHeaderBytes = 1 << 20;

    private static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Reads an array as float32 (float16, float64 and integer data are converted).</summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <returns>The array.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed or of an unsupported type.</exception>
    public static TensorData<float> ReadFloat32(string path) => ReadFile<float>(path);

    /// <summary>Reads an array as float64 (float16, float32 and integer data are converted).</summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <returns>The array.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed or of an unsupported type.</exception>
    public static TensorData<double> ReadFloat64(string path) => ReadFile<double>(path);

    /// <summary>Reads an integer array (any integer width) as int64, e.g. an index array.</summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <returns>The array.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed or not an integer array.</exception>
    public static TensorData<long> ReadInt64(string path) => ReadFile<long>(path);

    /// <summary>
    /// Reads an array keeping its values exactly: float16, bfloat16 and float32 as <c>TensorData&lt;float&gt;</c>,
    /// float64 as <c>TensorData&lt;double&gt;</c>, integers and booleans as <c>TensorData&lt;long&gt;</c>.
    /// </summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <returns>The array.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed or of an unsupported type.</exception>
    public static TensorData Read(string path)
    {
        var context = new FileContext(path, null);
        using FileStream stream = Files.OpenRead(path);
        return ReadNaturalFrom(stream, stream.Length, context);
    }

    /// <summary>
    /// Reads a key or value tensor into <paramref name="type"/>, rows of the last dimension, without widening when the file
    /// already holds the type: a float16 array (<c>&lt;f2</c>, or <c>&gt;f2</c> byte-swapped) asked as
    /// <see cref="KvElementType.Float16"/> or a float32 array asked as <see cref="KvElementType.Float32"/> is wrapped as stored,
    /// one copy of its elements. Otherwise the values are read as float32 (float16 widens exactly) and, unless float32 was
    /// asked for, rounded into the type (<see cref="KvTensor.Encode"/>); <see cref="KvTensorData.Converted"/> says which.
    /// </summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <param name="type">The storage type wanted.</param>
    /// <returns>The tensor, the file's shape and its element type.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed or of an unsupported type; it holds a scalar or
    /// rows of 0 elements (<see cref="TensorFileErrorKind.BadShape"/>); or a value does not fit the type, e.g. past +-65504 for
    /// float16 or not finite for q8 (<see cref="TensorFileErrorKind.UnsupportedType"/>).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="type"/> is not a <see cref="KvElementType"/>.</exception>
    public static KvTensorData ReadKv(string path, KvElementType type)
    {
        var context = new FileContext(path, null);
        using FileStream stream = Files.OpenRead(path);
        return ReadKvFrom(stream, stream.Length, context, type);
    }

    /// <summary>Reads an array as float32 from a stream (for example an embedded resource).</summary>
    /// <param name="stream">The stream, positioned at the start of the <c>.npy</c> data.</param>
    /// <param name="sourceName">The name error messages use for the stream.</param>
    /// <returns>The array.</returns>
    /// <exception cref="TensorFileException">The data is malformed or of an unsupported type.</exception>
    public static TensorData<float> ReadFloat32(Stream stream, string sourceName)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return ReadFrom<float>(stream, stream.CanSeek ? stream.Length - stream.Position : null, new FileContext(sourceName, null));
    }

    /// <summary>Writes an array as a version 1.0 <c>.npy</c> file (2.0 if the header needs it).</summary>
    /// <param name="path">The file to create or replace.</param>
    /// <param name="tensor">The array.</param>
    /// <exception cref="TensorFileException">The file could not be written.</exception>
    public static void Write(string path, TensorData tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        Files.Write(path, stream => WriteTo(stream, tensor));
    }

    /// <summary>Writes an array in <c>.npy</c> format to a stream.</summary>
    /// <param name="stream">The destination.</param>
    /// <param name="tensor">The array.</param>
    public static void WriteTo(Stream stream, TensorData tensor)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(tensor);
        string descr = Payload.TypeOf(tensor) switch
        {
            ElementType.Float32 => "<f4",
            ElementType.Float64 => "<f8",
            ElementType.Int32 => "<i4",
            _ => "<i8",
        };
        WriteHeader(stream, descr, tensor.Shape);
        Payload.WriteElements(stream, tensor);
    }

    /// <summary>The header <see cref="Write"/> gives a float32 array of <paramref name="shape"/>; returns the data offset.</summary>
    internal static int WriteHeaderFloat32(Stream stream, IReadOnlyList<int> shape) => WriteHeader(stream, "<f4", shape);

    /// <summary>Writes the magic, version and header dict, padded so the data starts on a 64-byte boundary; returns the data offset.</summary>
    private static int WriteHeader(Stream stream, string descr, IReadOnlyList<int> dims)
    {
        string shape = dims.Count == 1 ? $"({dims[0]},)" : "(" + string.Join(", ", dims) + ")";
        string dict = $"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}";

        int major = dict.Length + 1 + 10 <= ushort.MaxValue ? 1 : 2;
        int prefix = major == 1 ? 10 : 12;
        int total = (prefix + dict.Length + 1 + 63) / 64 * 64;
        string header = dict.PadRight(total - prefix - 1) + "\n";

        Span<byte> head = stackalloc byte[12];
        Magic.CopyTo(head);
        head[6] = (byte)major;
        head[7] = 0;
        if (major == 1)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(head[8..], (ushort)header.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(head[8..], (uint)header.Length);
        }

        stream.Write(head[..prefix]);
        stream.Write(Encoding.Latin1.GetBytes(header));
        return total;
    }

    private static TensorData<T> ReadFile<T>(string path)
        where T : unmanaged
    {
        var context = new FileContext(path, null);
        FileStream stream = Files.OpenRead(path);
        using (stream)
        {
            return ReadFrom<T>(stream, stream.Length, context);
        }
    }

    /// <summary>Reads one <c>.npy</c> payload from a stream. <paramref name="length"/> is the stream's byte length when known.</summary>
    internal static TensorData<T> ReadFrom<T>(Stream stream, long? length, FileContext context)
        where T : unmanaged
    {
        (ParsedHeader parsed, long offset) = ReadHeader(stream, length, context);
        return ReadPayload<T>(stream, length, context, parsed, offset);
    }

    /// <summary>Reads one <c>.npy</c> payload in the widest type its elements need without loss (see <see cref="Payload.ReadNatural"/>).</summary>
    internal static TensorData ReadNaturalFrom(Stream stream, long? length, FileContext context)
    {
        (ParsedHeader parsed, long offset) = ReadHeader(stream, length, context);
        return Payload.ReadNatural(parsed.Type,
            () => ReadPayload<float>(stream, length, context, parsed, offset),
            () => ReadPayload<double>(stream, length, context, parsed, offset),
            () => ReadPayload<long>(stream, length, context, parsed, offset));
    }

    /// <summary>Reads one <c>.npy</c> payload as a key/value tensor in <paramref name="type"/> (see <see cref="ReadKv"/>).</summary>
    internal static KvTensorData ReadKvFrom(Stream stream, long? length, FileContext context, KvElementType type)
    {
        (ParsedHeader parsed, long offset) = ReadHeader(stream, length, context);
        return Payload.ReadKv(parsed.Type, parsed.Shape, type, context, offset,
            () => ReadArray<Half>(stream, length, context, parsed, offset),
            () => ReadArray<ushort>(stream, length, context, parsed, offset),
            () => ReadArray<float>(stream, length, context, parsed, offset));
    }

    private static (ParsedHeader Parsed, long Offset) ReadHeader(Stream stream, long? length, FileContext context)
    {
        Span<byte> prefix = stackalloc byte[10];
        if (length is < 10)
        {
            throw context.Error(length == 0 ? TensorFileErrorKind.Empty : TensorFileErrorKind.Truncated, 0,
                $"file is {length} bytes long, too short for a .npy header");
        }

        Payload.ReadExactly(stream, prefix, context, 0);
        if (!prefix[..6].SequenceEqual(Magic))
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, 0, "not a .npy file (the magic bytes \\x93NUMPY are missing)");
        }

        int major = prefix[6];
        long headerLength;
        long offset;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(prefix[8..]);
            offset = 10;
        }
        else if (major is 2 or 3)
        {
            Span<byte> rest = stackalloc byte[2];
            Payload.ReadExactly(stream, rest, context, 10);
            uint value = BinaryPrimitives.ReadUInt32LittleEndian([prefix[8], prefix[9], rest[0], rest[1]]);
            headerLength = value;
            offset = 12;
        }
        else
        {
            throw context.Error(TensorFileErrorKind.BadHeader, 6, $"unsupported .npy format version {major}.{prefix[7]} (1, 2 and 3 are supported)");
        }

        if (headerLength > MaxHeaderBytes)
        {
            throw context.Error(TensorFileErrorKind.HeaderTooLarge, 8, $"header claims {headerLength} bytes; at most {MaxHeaderBytes} are accepted");
        }

        if (length is long total && offset + headerLength > total)
        {
            throw context.Error(TensorFileErrorKind.Truncated, total, $"file ends inside the {headerLength}-byte header");
        }

        byte[] headerBytes = new byte[headerLength];
        Payload.ReadExactly(stream, headerBytes, context, offset);
        string header = major == 3 ? Encoding.UTF8.GetString(headerBytes) : Encoding.Latin1.GetString(headerBytes);
        var parsed = HeaderParser.Parse(header, context, offset);
        return (parsed, offset + headerLength);
    }

    private static TensorData<T> ReadPayload<T>(Stream stream, long? length, FileContext context, ParsedHeader parsed, long offset)
        where T : unmanaged
    {
        (T[] data, int[] shape) = ReadArray<T>(stream, length, context, parsed, offset);
        return new TensorData<T>(data, shape);
    }

    /// <summary>The payload in C order as <typeparamref name="T"/> (also Half or ushort, which <see cref="TensorData{T}"/> does not hold), and its shape.</summary>
    private static (T[] Data, int[] Shape) ReadArray<T>(Stream stream, long? length, FileContext context, ParsedHeader parsed, long offset)
        where T : unmanaged
    {
        long count = Payload.CheckedElementCount(parsed.Shape, parsed.Type, context, offset);
        T[] data = Payload.Read<T>(stream, count, parsed.Type, parsed.BigEndian, length - offset, context, offset);
        int[] shape = Array.ConvertAll(parsed.Shape, x => (int)x);
        if (parsed.FortranOrder && shape.Length > 1)
        {
            data = FortranToC(data, shape);
        }

        return (data, shape);
    }

    /// <summary>Reorders data stored in Fortran (column-major) order into C (row-major) order.</summary>
    private static T[] FortranToC<T>(T[] source, int[] shape)
    {
        var result = new T[source.LongLength];
        int rank = shape.Length;
        Span<long> fortranStride = stackalloc long[rank];
        long stride = 1;
        for (int a = 0; a < rank; a++)
        {
            fortranStride[a] = stride;
            stride *= shape[a];
        }

        Span<int> index = stackalloc int[rank];
        long from = 0;
        for (long to = 0; to < result.LongLength; to++)
        {
            result[to] = source[from];

            // Advance the C-order multi-index (last axis fastest), tracking the Fortran offset.
            for (int a = rank - 1; a >= 0; a--)
            {
                index[a]++;
                from += fortranStride[a];
                if (index[a] < shape[a])
                {
                    break;
                }

                from -= fortranStride[a] * shape[a];
                index[a] = 0;
            }
        }

        return result;
    }

    private readonly record struct ParsedHeader(ElementType Type, bool BigEndian, bool FortranOrder, long[] Shape);

    /// <summary>Parses the Python dict literal of a .npy header: <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }</c>.</summary>
    private ref struct HeaderParser
    {
        private readonly string _text;
        private readonly FileContext _context;
        private readonly long _offset;
        private int _at;

        private HeaderParser(string text, FileContext context, long offset)
        {
            _text = text;
            _context = context;
            _offset = offset;
            _at = 0;
        }

        public static ParsedHeader Parse(string text, FileContext context, long offset)
        {
            var parser = new HeaderParser(text, context, offset);
            return parser.ParseDict();
        }

        private ParsedHeader ParseDict()
        {
            string? descr = null;
            bool? fortran = null;
            long[]? shape = null;
            Expect('{');
            while (true)
            {
                SkipSpace();
                if (Peek() == '}')
                {
                    _at++;
                    break;
                }

                string key = ParseString();
                Expect(':');
                SkipSpace();
                switch (key)
                {
                    case "descr":
                        if (Peek() == '[')
                        {
                            throw Fail(TensorFileErrorKind.UnsupportedType, "structured dtypes are not supported; save a plain numeric array");
                        }

                        descr = ParseString();
                        break;
                    case "fortran_order":
                        fortran = ParseBool();
                        break;
                    case "shape":
                        shape = ParseTuple();
                        break;
                    default:
                        throw Fail(TensorFileErrorKind.BadHeader, $"unexpected header key '{key}'");
                }

                SkipSpace();
                if (Peek() == ',')
                {
                    _at++;
                }
                else if (Peek() != '}')
                {
                    throw Fail(TensorFileErrorKind.BadHeader, $"expected ',' or '}}' but found {Describe()}");
                }
            }

            SkipSpace();
            if (_at != _text.Length)
            {
                throw Fail(TensorFileErrorKind.BadHeader, "unexpected text after the header dict");
            }

            if (descr is null || fortran is null || shape is null)
            {
                throw Fail(TensorFileErrorKind.BadHeader, "header must define 'descr', 'fortran_order' and 'shape'");
            }

            (ElementType type, bool bigEndian) = ParseDescr(descr);
            return new ParsedHeader(type, bigEndian, fortran.Value, shape);
        }

        private (ElementType Type, bool BigEndian) ParseDescr(string descr)
        {
            if (descr.Length < 3 || descr[0] is not ('<' or '>' or '|' or '='))
            {
                throw Fail(TensorFileErrorKind.UnsupportedType, $"unsupported dtype '{descr}'");
            }

            bool bigEndian = descr[0] == '>' || (descr[0] == '=' && !BitConverter.IsLittleEndian);
            ElementType? type = descr[1..] switch
            {
                "f2" or "e" => ElementType.Float16,
                "f4" => ElementType.Float32,
                "f8" => ElementType.Float64,
                "i1" => ElementType.Int8,
                "u1" => ElementType.UInt8,
                "b1" => ElementType.Bool,
                "i2" => ElementType.Int16,
                "u2" => ElementType.UInt16,
                "i4" => ElementType.Int32,
                "u4" => ElementType.UInt32,
                "i8" => ElementType.Int64,
                "u8" => ElementType.UInt64,
                _ => null,
            };
            if (type is null)
            {
                throw Fail(TensorFileErrorKind.UnsupportedType,
                    $"unsupported dtype '{descr}' (float16/32/64, signed/unsigned integers and bool are supported)");
            }

            return (type.Value, bigEndian);
        }

        private string ParseString()
        {
            SkipSpace();
            char quote = Peek();
            if (quote is not ('\'' or '"'))
            {
                throw Fail(TensorFileErrorKind.BadHeader, $"expected a quoted string but found {Describe()}");
            }

            int end = _text.IndexOf(quote, _at + 1);
            if (end < 0)
            {
                throw Fail(TensorFileErrorKind.BadHeader, "unterminated string");
            }

            string value = _text.Substring(_at + 1, end - _at - 1);
            _at = end + 1;
            return value;
        }

        private bool ParseBool()
        {
            if (string.CompareOrdinal(_text, _at, "True", 0, 4) == 0)
            {
                _at += 4;
                return true;
            }

            if (string.CompareOrdinal(_text, _at, "False", 0, 5) == 0)
            {
                _at += 5;
                return false;
            }

            throw Fail(TensorFileErrorKind.BadHeader, $"expected True or False but found {Describe()}");
        }

        private long[] ParseTuple()
        {
            Expect('(');
            var values = new List<long>();
            while (true)
            {
                SkipSpace();
                if (Peek() == ')')
                {
                    _at++;
                    return [.. values];
                }

                int start = _at;
                while (_at < _text.Length && (char.IsAsciiDigit(_text[_at]) || _text[_at] == '-'))
                {
                    _at++;
                }

                if (!long.TryParse(_text.AsSpan(start, _at - start), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long value))
                {
                    throw Fail(TensorFileErrorKind.BadShape, $"shape entry '{_text.Substring(start, Math.Min(_at - start + 1, _text.Length - start))}' is not an integer");
                }

                if (_at < _text.Length && _text[_at] == 'L')
                {
                    _at++; // Python 2 long suffix.
                }

                if (values.Count >= 64)
                {
                    throw Fail(TensorFileErrorKind.BadShape, "more than 64 dimensions");
                }

                values.Add(value);
                SkipSpace();
                if (Peek() == ',')
                {
                    _at++;
                }
                else if (Peek() != ')')
                {
                    throw Fail(TensorFileErrorKind.BadShape, $"expected ',' or ')' in the shape but found {Describe()}");
                }
            }
        }

        private void Expect(char c)
        {
            SkipSpace();
            if (Peek() != c)
            {
                throw Fail(TensorFileErrorKind.BadHeader, $"expected '{c}' but found {Describe()}");
            }

            _at++;
        }

        private void SkipSpace()
        {
            while (_at < _text.Length && char.IsWhiteSpace(_text[_at]))
            {
                _at++;
            }
        }

        private readonly char Peek() => _at < _text.Length ? _text[_at] : '\0';

        private readonly string Describe() => _at < _text.Length ? $"'{_text[_at]}'" : "the end of the header";

        private readonly TensorFileException Fail(TensorFileErrorKind kind, string detail) =>
            _context.Error(kind, _offset + _at, "bad .npy header: " + detail);
    }
}
