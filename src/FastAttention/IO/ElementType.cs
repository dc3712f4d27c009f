using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace FastAttention.IO;

/// <summary>The on-disk element types the readers understand (NumPy and safetensors share them).</summary>
internal enum ElementType
{
    Float16,
    BFloat16,
    Float32,
    Float64,
    Int8,
    UInt8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Bool,
}

/// <summary>Where a payload comes from, for error messages.</summary>
internal readonly record struct FileContext(string FilePath, string? TensorName)
{
    public TensorFileException Error(TensorFileErrorKind kind, long offset, string detail, Exception? inner = null) =>
        new(kind, FilePath, TensorName, offset, detail, inner);
}

/// <summary>
/// Reads an element payload from a stream into a typed array, converting element type and byte order
/// on the fly in small chunks, so no buffer is ever sized by an unchecked header field.
/// </summary>
internal static class Payload
{
    private const int ChunkBytes = 1 << 20;

    public static int SizeOf(ElementType type) => type switch
    {
        ElementType.Int8 or ElementType.UInt8 or ElementType.Bool => 1,
        ElementType.Float16 or ElementType.BFloat16 or ElementType.Int16 or ElementType.UInt16 => 2,
        ElementType.Float32 or ElementType.Int32 or ElementType.UInt32 => 4,
        _ => 8,
    };

    /// <summary>
    /// Reads with the reader for the widest in-memory type the element type fits without loss: float32 for
    /// float16, bfloat16 and float32; float64; int64 for integers and booleans.
    /// </summary>
    public static TensorData ReadNatural(ElementType type, Func<TensorData> asFloat32, Func<TensorData> asFloat64, Func<TensorData> asInt64) => type switch
    {
        ElementType.Float16 or ElementType.BFloat16 or ElementType.Float32 => asFloat32(),
        ElementType.Float64 => asFloat64(),
        _ => asInt64(),
    };

    /// <summary>The element type as NumPy names it (<c>float16</c>, <c>bfloat16</c>, <c>int8</c>, <c>bool</c>, ...).</summary>
    public static string Name(ElementType type) => type == ElementType.BFloat16 ? "bfloat16" : type.ToString().ToLowerInvariant();

    /// <summary>
    /// A key/value tensor in <paramref name="target"/> from a payload of <paramref name="source"/> type and <paramref name="shape"/>
    /// (rows of the last dimension), read without widening when the file already holds the type: a float16 payload asked as
    /// float16 comes in through <paramref name="asFloat16"/>, a bfloat16 one asked as bfloat16 through <paramref name="asBFloat16"/>,
    /// a float32 one asked as float32 through <paramref name="asFloat32"/>, each one copy of the file's elements. Anything else is
    /// read as float32 (float16 and bfloat16 widen exactly; float64 and integers round to float32, as <see cref="NumpyFile.ReadFloat32(string)"/> does) and, unless float32 was asked
    /// for, encoded into the type (<see cref="KvTensor.Encode"/>); values the type cannot hold are an
    /// <see cref="TensorFileErrorKind.UnsupportedType"/> error naming the value and its place.
    /// </summary>
    public static KvTensorData ReadKv(ElementType source, long[] shape, KvElementType target, FileContext context, long offset,
        Func<(Half[] Data, int[] Shape)> asFloat16, Func<(ushort[] Data, int[] Shape)> asBFloat16, Func<(float[] Data, int[] Shape)> asFloat32)
    {
        if (!Enum.IsDefined(target))
        {
            throw new ArgumentOutOfRangeException(nameof(target), target, "Unknown KV element type; use Float32, Float16, BFloat16 or Q8.");
        }

        if (shape.Length == 0)
        {
            throw context.Error(TensorFileErrorKind.BadShape, offset, "a scalar is no key or value tensor: it needs rows (the last dimension)");
        }

        if (shape[^1] == 0)
        {
            throw context.Error(TensorFileErrorKind.BadShape, offset,
                $"shape [{string.Join(", ", shape)}] has rows of 0 elements; the last dimension is the row length (d or dv) and must be positive");
        }

        string stored = Name(source);
        switch ((source, target))
        {
            case (ElementType.Float16, KvElementType.Float16):
            {
                (Half[] data, int[] dims) = asFloat16();
                return new KvTensorData(KvTensor.FromFloat16(data, dims[^1]), dims, stored, false);
            }

            case (ElementType.BFloat16, KvElementType.BFloat16):
            {
                (ushort[] data, int[] dims) = asBFloat16();
                return new KvTensorData(KvTensor.FromBFloat16(data, dims[^1]), dims, stored, false);
            }

            default:
            {
                (float[] data, int[] dims) = asFloat32();
                if (target == KvElementType.Float32)
                {
                    return new KvTensorData(KvTensor.FromFloat32(data, dims[^1]), dims, stored, source != ElementType.Float32);
                }

                try
                {
                    return new KvTensorData(KvTensor.Encode(data, dims[^1], target), dims, stored, true);
                }
                catch (ArgumentException ex)
                {
                    throw context.Error(TensorFileErrorKind.UnsupportedType, offset,
                        $"cannot store this {stored} tensor as {KvElementTypes.Name(target)}: {ex.Message}", ex);
                }
            }
        }
    }

    public static bool IsInteger(ElementType type) =>
        type is not (ElementType.Float16 or ElementType.BFloat16 or ElementType.Float32 or ElementType.Float64);

    /// <summary>Checks a shape and returns its element count, refusing overflow and arrays .NET cannot hold.</summary>
    public static long CheckedElementCount(ReadOnlySpan<long> shape, ElementType type, FileContext context, long offset)
    {
        long count = 1;
        foreach (long length in shape)
        {
            if (length < 0)
            {
                throw context.Error(TensorFileErrorKind.BadShape, offset, $"shape has a negative dimension ({length})");
            }

            if (length > int.MaxValue)
            {
                throw context.Error(TensorFileErrorKind.BadShape, offset, $"dimension {length} exceeds {int.MaxValue}");
            }

            if (length != 0 && count > Array.MaxLength / length)
            {
                throw context.Error(TensorFileErrorKind.BadShape, offset,
                    $"shape [{string.Join(", ", shape.ToArray())}] has more elements than one array can hold ({Array.MaxLength})");
            }

            count *= length;
        }

        if (count > long.MaxValue / SizeOf(type))
        {
            throw context.Error(TensorFileErrorKind.BadShape, offset, "byte size overflows");
        }

        return count;
    }

    /// <summary>
    /// Reads <paramref name="count"/> elements of <paramref name="source"/> type and converts them to
    /// <typeparamref name="T"/>. When <paramref name="remaining"/> (bytes left in the source) is known,
    /// the payload must fill it exactly; otherwise the stream must end right after the payload.
    /// </summary>
    public static T[] Read<T>(Stream stream, long count, ElementType source, bool bigEndian, long? remaining, FileContext context, long offset)
        where T : unmanaged
    {
        long byteCount = count * SizeOf(source);
        if (remaining is long left)
        {
            if (left < byteCount)
            {
                throw context.Error(TensorFileErrorKind.Truncated, offset + left,
                    $"data ends after {left} bytes but the header promises {byteCount} ({count} elements of {source})");
            }

            if (left > byteCount)
            {
                throw context.Error(TensorFileErrorKind.SizeMismatch, offset + byteCount,
                    $"{left - byteCount} unexpected bytes after the {byteCount}-byte payload");
            }

            var result = new T[count];
            Fill(stream, result, source, bigEndian, context, offset);
            return result;
        }

        // Unknown length (a compressed zip entry): convert into small segments first, so a header
        // that lies about the size cannot make us allocate more than the data really holds.
        const int SegmentElements = 1 << 20;
        var segments = new List<T[]>();
        long done = 0;
        while (done < count)
        {
            var segment = new T[Math.Min(SegmentElements, count - done)];
            Fill(stream, segment, source, bigEndian, context, offset + (done * SizeOf(source)));
            segments.Add(segment);
            done += segment.Length;
        }

        if (stream.ReadByte() >= 0)
        {
            throw context.Error(TensorFileErrorKind.SizeMismatch, offset + byteCount, "unexpected bytes after the payload");
        }

        if (segments.Count == 1 && segments[0].LongLength == count)
        {
            return segments[0];
        }

        var joined = new T[count];
        long at = 0;
        foreach (T[] segment in segments)
        {
            segment.CopyTo(joined, at);
            at += segment.Length;
        }

        return joined;
    }

    private static void Fill<T>(Stream stream, T[] destination, ElementType source, bool bigEndian, FileContext context, long offset)
        where T : unmanaged
    {
        int size = SizeOf(source);
        byte[] buffer = new byte[Math.Min(ChunkBytes, Math.Max(size, destination.LongLength * size))];
        int perChunk = buffer.Length / size;
        long done = 0;
        while (done < destination.LongLength)
        {
            int n = (int)Math.Min(perChunk, destination.LongLength - done);
            Span<byte> raw = buffer.AsSpan(0, n * size);
            ReadExactly(stream, raw, context, offset + (done * size));
            if (bigEndian && size > 1)
            {
                SwapBytes(raw, size);
            }

            Convert(raw, source, destination.AsSpan((int)done, n), context, offset + (done * size));
            done += n;
        }
    }

    public static void ReadExactly(Stream stream, Span<byte> buffer, FileContext context, long offset)
    {
        int got = 0;
        try
        {
            while (got < buffer.Length)
            {
                int n = stream.Read(buffer[got..]);
                if (n == 0)
                {
                    throw context.Error(TensorFileErrorKind.Truncated, offset + got,
                        $"file ends {buffer.Length - got} bytes early");
                }

                got += n;
            }
        }
        catch (InvalidDataException ex)
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, offset + got, "corrupt compressed data: " + ex.Message, ex);
        }
        catch (IOException ex)
        {
            throw context.Error(TensorFileErrorKind.Io, offset + got, ex.Message, ex);
        }
    }

    private static void SwapBytes(Span<byte> raw, int size)
    {
        switch (size)
        {
            case 2:
                Span<ushort> u16 = MemoryMarshal.Cast<byte, ushort>(raw);
                BinaryPrimitives.ReverseEndianness(u16, u16);
                break;
            case 4:
                Span<uint> u32 = MemoryMarshal.Cast<byte, uint>(raw);
                BinaryPrimitives.ReverseEndianness(u32, u32);
                break;
            default:
                Span<ulong> u64 = MemoryMarshal.Cast<byte, ulong>(raw);
                BinaryPrimitives.ReverseEndianness(u64, u64);
                break;
        }
    }

    private static void Convert<T>(ReadOnlySpan<byte> raw, ElementType source, Span<T> destination, FileContext context, long offset)
        where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            ToFloat(raw, source, MemoryMarshal.Cast<T, float>(destination));
        }
        else if (typeof(T) == typeof(double))
        {
            ToDouble(raw, source, MemoryMarshal.Cast<T, double>(destination));
        }
        else if (typeof(T) == typeof(long))
        {
            ToInt64(raw, source, MemoryMarshal.Cast<T, long>(destination), context, offset);
        }
        else if ((typeof(T) == typeof(Half) && source == ElementType.Float16) || (typeof(T) == typeof(ushort) && source == ElementType.BFloat16))
        {
            // Kept as stored (16 bits each, byte order already fixed), for key/value tensors read without widening.
            raw.CopyTo(MemoryMarshal.AsBytes(destination));
        }
        else
        {
            throw new NotSupportedException($"Cannot read into {typeof(T).Name}.");
        }
    }

    private static void ToFloat(ReadOnlySpan<byte> raw, ElementType source, Span<float> destination)
    {
        switch (source)
        {
            case ElementType.Float32:
                MemoryMarshal.Cast<byte, float>(raw).CopyTo(destination);
                return;
            case ElementType.Float64:
                ReadOnlySpan<double> f64 = MemoryMarshal.Cast<byte, double>(raw);
                for (int i = 0; i < destination.Length; i++)
                {
                    destination[i] = (float)f64[i];
                }

                return;
            case ElementType.Float16:
                ReadOnlySpan<Half> f16 = MemoryMarshal.Cast<byte, Half>(raw);
                for (int i = 0; i < destination.Length; i++)
                {
                    destination[i] = (float)f16[i];
                }

                return;
            case ElementType.BFloat16:
                ReadOnlySpan<ushort> bf16 = MemoryMarshal.Cast<byte, ushort>(raw);
                for (int i = 0; i < destination.Length; i++)
                {
                    destination[i] = BitConverter.Int32BitsToSingle(bf16[i] << 16);
                }

                return;
            default:
                for (int i = 0; i < destination.Length; i++)
                {
                    destination[i] = (float)IntegerAt(raw, source, i);
                }

                return;
        }
    }

    private static void ToDouble(ReadOnlySpan<byte> raw, ElementType source, Span<double> destination)
    {
        if (source == ElementType.Float64)
        {
            MemoryMarshal.Cast<byte, double>(raw).CopyTo(destination);
            return;
        }

        if (IsInteger(source))
        {
            for (int i = 0; i < destination.Length; i++)
            {
                destination[i] = IntegerAt(raw, source, i);
            }

            return;
        }

        Span<float> tmp = new float[destination.Length];
        ToFloat(raw, source, tmp);
        for (int i = 0; i < destination.Length; i++)
        {
            destination[i] = tmp[i];
        }
    }

    private static void ToInt64(ReadOnlySpan<byte> raw, ElementType source, Span<long> destination, FileContext context, long offset)
    {
        if (!IsInteger(source))
        {
            throw context.Error(TensorFileErrorKind.UnsupportedType, offset, $"expected an integer array but found {source}");
        }

        for (int i = 0; i < destination.Length; i++)
        {
            if (source == ElementType.UInt64)
            {
                ulong u = MemoryMarshal.Cast<byte, ulong>(raw)[i];
                if (u > long.MaxValue)
                {
                    throw context.Error(TensorFileErrorKind.UnsupportedType, offset + (8L * i), $"uint64 value {u} does not fit in int64");
                }
            }

            destination[i] = (long)IntegerAt(raw, source, i);
        }
    }

    private static double IntegerAt(ReadOnlySpan<byte> raw, ElementType source, int i) => source switch
    {
        ElementType.Int8 => (sbyte)raw[i],
        ElementType.UInt8 => raw[i],
        ElementType.Bool => raw[i] != 0 ? 1 : 0,
        ElementType.Int16 => MemoryMarshal.Cast<byte, short>(raw)[i],
        ElementType.UInt16 => MemoryMarshal.Cast<byte, ushort>(raw)[i],
        ElementType.Int32 => MemoryMarshal.Cast<byte, int>(raw)[i],
        ElementType.UInt32 => MemoryMarshal.Cast<byte, uint>(raw)[i],
        ElementType.Int64 => MemoryMarshal.Cast<byte, long>(raw)[i],
        _ => MemoryMarshal.Cast<byte, ulong>(raw)[i],
    };

    /// <summary>The on-disk type a tensor is written as.</summary>
    public static ElementType TypeOf(TensorData tensor) => tensor switch
    {
        TensorData<float> => ElementType.Float32,
        TensorData<double> => ElementType.Float64,
        TensorData<int> => ElementType.Int32,
        TensorData<long> => ElementType.Int64,
        _ => throw new NotSupportedException($"Cannot write {tensor.ElementTypeName}."),
    };

    /// <summary>Writes a tensor's elements as little-endian bytes (this library runs on little-endian CPUs only).</summary>
    public static void WriteElements(Stream stream, TensorData tensor)
    {
        switch (tensor)
        {
            case TensorData<float> f: WriteSpan<float>(stream, f.Data); break;
            case TensorData<double> f: WriteSpan<double>(stream, f.Data); break;
            case TensorData<int> i: WriteSpan<int>(stream, i.Data); break;
            case TensorData<long> i: WriteSpan<long>(stream, i.Data); break;
            default: throw new NotSupportedException($"Cannot write {tensor.ElementTypeName}.");
        }
    }

    private static void WriteSpan<T>(Stream stream, T[] data)
        where T : unmanaged
    {
        int perChunk = ChunkBytes / System.Runtime.CompilerServices.Unsafe.SizeOf<T>();
        for (long at = 0; at < data.LongLength; at += perChunk)
        {
            int n = (int)Math.Min(perChunk, data.LongLength - at);
            stream.Write(MemoryMarshal.AsBytes(data.AsSpan((int)at, n)));
        }
    }
}
