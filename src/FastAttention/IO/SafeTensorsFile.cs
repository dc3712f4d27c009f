using System.Buffers.Binary;
using System.Text.Json;

namespace FastAttention.IO;

/// <summary>
/// Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header naming each
/// tensor's dtype, shape and byte range, then the data. Reads F16, BF16, F32, F64 and integer
/// tensors (one by name, or all); writes F32, F64, I32 and I64. Files are untrusted: the header is
/// capped, every range is checked against the file, ranges may neither overlap nor leave holes, and a
/// range must hold exactly the bytes its shape needs.
/// </summary>
public static class SafeTensorsFile
{
    /// <summary>The largest JSON header the reader accepts (the reference implementation uses the same cap).</summary>
    public const int MaxHeaderBytes = 100_000_000;

    /// <summary>The tensor names in the file, in data order.</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <returns>The names.</returns>
    public static IReadOnlyList<string> Names(string path)
    {
        using FileStream stream = Open(path);
        return [.. ReadIndex(stream, path).Entries.Select(e => e.Name)];
    }

    /// <summary>The free-form string metadata (<c>__metadata__</c>) of the file; empty when absent.</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <returns>The metadata.</returns>
    public static IReadOnlyDictionary<string, string> Metadata(string path)
    {
        using FileStream stream = Open(path);
        return ReadIndex(stream, path).Metadata;
    }

    /// <summary>Reads one tensor as float32 (F16, BF16, F64 and integers are converted).</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <param name="name">The tensor name.</param>
    /// <returns>The tensor.</returns>
    public static TensorData<float> ReadFloat32(string path, string name) => ReadOne<float>(path, name);

    /// <summary>Reads one integer tensor as int64.</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <param name="name">The tensor name.</param>
    /// <returns>The tensor.</returns>
    public static TensorData<long> ReadInt64(string path, string name) => ReadOne<long>(path, name);

    /// <summary>
    /// Reads one tensor as a key or value tensor in <paramref name="type"/>, rows of the last dimension, without widening when
    /// the file already holds the type: an F16 entry asked as <see cref="KvElementType.Float16"/>, a BF16 one asked as
    /// <see cref="KvElementType.BFloat16"/> or an F32 one asked as <see cref="KvElementType.Float32"/> is wrapped as stored,
    /// one copy of its elements. Otherwise the values are read as float32 (F16 and BF16 widen exactly) and, unless float32 was
    /// asked for, rounded into the type (<see cref="KvTensor.Encode"/>); <see cref="KvTensorData.Converted"/> says which.
    /// </summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <param name="name">The tensor name.</param>
    /// <param name="type">The storage type wanted.</param>
    /// <returns>The tensor, its shape and the entry's element type.</returns>
    /// <exception cref="TensorFileException">The file is missing or malformed, the tensor is not in it, its dtype is
    /// unsupported, it is a scalar or has rows of 0 elements (<see cref="TensorFileErrorKind.BadShape"/>), or a value does not
    /// fit the type (<see cref="TensorFileErrorKind.UnsupportedType"/>).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="type"/> is not a <see cref="KvElementType"/>.</exception>
    public static KvTensorData ReadKv(string path, string name, KvElementType type)
    {
        ArgumentNullException.ThrowIfNull(name);
        using FileStream stream = Open(path);
        Index index = ReadIndex(stream, path);
        Entry entry = Find(index, path, name);
        var context = new FileContext(path, entry.Name);
        long start = index.DataStart + entry.Begin;
        return Payload.ReadKv(entry.Type, entry.Shape, type, context, start,
            () => ReadArray<Half>(stream, path, index, entry),
            () => ReadArray<ushort>(stream, path, index, entry),
            () => ReadArray<float>(stream, path, index, entry));
    }

    /// <summary>Reads every tensor as float32, keyed by name, in data order.</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <returns>The tensors.</returns>
    public static IReadOnlyDictionary<string, TensorData<float>> ReadAllFloat32(string path)
    {
        using FileStream stream = Open(path);
        Index index = ReadIndex(stream, path);
        var result = new Dictionary<string, TensorData<float>>(StringComparer.Ordinal);
        foreach (Entry entry in index.Entries)
        {
            result[entry.Name] = ReadEntry<float>(stream, path, index, entry);
        }

        return result;
    }

    /// <summary>Reads every tensor keeping its values exactly (F16, BF16 and F32 as float32, F64 as float64, integers and BOOL as int64), in data order.</summary>
    /// <param name="path">The <c>.safetensors</c> file.</param>
    /// <returns>The tensors.</returns>
    public static IReadOnlyList<KeyValuePair<string, TensorData>> ReadAll(string path)
    {
        using FileStream stream = Open(path);
        Index index = ReadIndex(stream, path);
        return [.. index.Entries.Select(entry => new KeyValuePair<string, TensorData>(entry.Name, Payload.ReadNatural(entry.Type,
            () => ReadEntry<float>(stream, path, index, entry),
            () => ReadEntry<double>(stream, path, index, entry),
            () => ReadEntry<long>(stream, path, index, entry))))];
    }

    /// <summary>Writes tensors (float32, float64, int32, int64) to a new safetensors file.</summary>
    /// <param name="path">The file to create or replace.</param>
    /// <param name="tensors">Names and tensors, written in this order.</param>
    /// <param name="metadata">Optional string metadata stored as <c>__metadata__</c>.</param>
    public static void Write(string path, IEnumerable<KeyValuePair<string, TensorData>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        List<KeyValuePair<string, TensorData>> list = [.. tensors];
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach ((string key, string value) in metadata)
                {
                    json.WriteString(key, value);
                }

                json.WriteEndObject();
            }

            var seen = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach ((string name, TensorData tensor) in list)
            {
                if (string.IsNullOrEmpty(name) || name == "__metadata__" || !seen.Add(name))
                {
                    throw new ArgumentException($"Tensor name '{name}' is empty, reserved or repeated.", nameof(tensors));
                }

                ElementType type = Payload.TypeOf(tensor);
                long bytes = tensor.ElementCount * Payload.SizeOf(type);
                json.WriteStartObject(name);
                json.WriteString("dtype", DTypeName(type));
                json.WriteStartArray("shape");
                foreach (int length in tensor.Shape)
                {
                    json.WriteNumberValue(length);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }

            json.WriteEndObject();
        }

        // Pad the header with spaces to a multiple of 8 bytes so the data is aligned.
        while (buffer.Length % 8 != 0)
        {
            buffer.WriteByte((byte)' ');
        }

        Files.Write(path, stream =>
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)buffer.Length);
            stream.Write(prefix);
            buffer.Position = 0;
            buffer.CopyTo(stream);
            foreach ((_, TensorData tensor) in list)
            {
                Payload.WriteElements(stream, tensor);
            }
        });
    }

    private static TensorData<T> ReadOne<T>(string path, string name)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(name);
        using FileStream stream = Open(path);
        Index index = ReadIndex(stream, path);
        return ReadEntry<T>(stream, path, index, Find(index, path, name));
    }

    private static Entry Find(Index index, string path, string name) =>
        index.Entries.FirstOrDefault(e => e.Name == name)
        ?? throw new TensorFileException(TensorFileErrorKind.TensorNotFound, path, name, -1,
            "no such tensor; the file holds: " + string.Join(", ", index.Entries.Select(e => e.Name)));

    private static TensorData<T> ReadEntry<T>(FileStream stream, string path, Index index, Entry entry)
        where T : unmanaged
    {
        (T[] data, int[] shape) = ReadArray<T>(stream, path, index, entry);
        return new TensorData<T>(data, shape);
    }

    /// <summary>The entry's elements as <typeparamref name="T"/> (also Half or ushort, which <see cref="TensorData{T}"/> does not hold), and its shape.</summary>
    private static (T[] Data, int[] Shape) ReadArray<T>(FileStream stream, string path, Index index, Entry entry)
        where T : unmanaged
    {
        var context = new FileContext(path, entry.Name);
        long start = index.DataStart + entry.Begin;
        stream.Position = start;
        T[] data = Payload.Read<T>(new BoundedStream(stream, entry.End - entry.Begin), entry.Count, entry.Type, false,
            entry.End - entry.Begin, context, start);
        return (data, Array.ConvertAll(entry.Shape, x => (int)x));
    }

    private sealed record Entry(string Name, ElementType Type, long[] Shape, long Count, long Begin, long End);

    private sealed record Index(List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart);

    private static Index ReadIndex(FileStream stream, string path)
    {
        var context = new FileContext(path, null);
        long fileLength = stream.Length;
        if (fileLength < 8)
        {
            throw context.Error(fileLength == 0 ? TensorFileErrorKind.Empty : TensorFileErrorKind.Truncated, 0,
                $"file is {fileLength} bytes long, too short for a safetensors header");
        }

        Span<byte> prefix = stackalloc byte[8];
        Payload.ReadExactly(stream, prefix, context, 0);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > MaxHeaderBytes)
        {
            throw context.Error(TensorFileErrorKind.HeaderTooLarge, 0, $"header claims {headerLength} bytes; at most {MaxHeaderBytes} are accepted");
        }

        if ((long)headerLength > fileLength - 8)
        {
            throw context.Error(TensorFileErrorKind.Truncated, fileLength, $"file ends inside the {headerLength}-byte header");
        }

        byte[] header = new byte[headerLength];
        Payload.ReadExactly(stream, header, context, 8);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        if (!System.Text.Unicode.Utf8.IsValid(header))
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, 8, "header is not valid UTF-8 JSON");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException ex)
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, 8 + (ex.BytePositionInLine ?? 0), "header is not valid JSON: " + ex.Message, ex);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw context.Error(TensorFileErrorKind.BadHeader, 8, "header must be a JSON object");
            }

            var entries = new List<Entry>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    ReadMetadata(property.Value, metadata, context);
                    continue;
                }

                entries.Add(ReadEntryHeader(property, dataLength, context with { TensorName = property.Name }));
            }

            // The format requires the ranges to tile the data buffer exactly: no overlap, no hole.
            entries.Sort((a, b) => a.Begin.CompareTo(b.Begin));
            long expected = 0;
            foreach (Entry entry in entries)
            {
                if (entry.Begin != expected)
                {
                    throw context.Error(TensorFileErrorKind.SizeMismatch, dataStart + entry.Begin,
                        $"tensor '{entry.Name}' starts at data byte {entry.Begin} but the previous range ends at {expected} (ranges overlap or leave a hole)");
                }

                expected = entry.End;
            }

            if (expected != dataLength)
            {
                throw context.Error(expected > dataLength ? TensorFileErrorKind.Truncated : TensorFileErrorKind.SizeMismatch, dataStart + expected,
                    $"the tensors cover {expected} data bytes but the file holds {dataLength}");
            }

            return new Index(entries, metadata, dataStart);
        }
    }

    private static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata, FileContext context)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw context.Error(TensorFileErrorKind.BadHeader, 8, "__metadata__ must be an object of strings");
        }

        foreach (JsonProperty item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw context.Error(TensorFileErrorKind.BadHeader, 8, $"__metadata__ value '{item.Name}' must be a string");
            }

            metadata[item.Name] = item.Value.GetString()!;
        }
    }

    private static Entry ReadEntryHeader(JsonProperty property, long dataLength, FileContext context)
    {
        JsonElement value = property.Value;
        if (value.ValueKind != JsonValueKind.Object
            || !value.TryGetProperty("dtype", out JsonElement dtype) || dtype.ValueKind != JsonValueKind.String
            || !value.TryGetProperty("shape", out JsonElement shape) || shape.ValueKind != JsonValueKind.Array
            || !value.TryGetProperty("data_offsets", out JsonElement offsets) || offsets.ValueKind != JsonValueKind.Array
            || offsets.GetArrayLength() != 2)
        {
            throw context.Error(TensorFileErrorKind.BadHeader, 8, "entry needs a string 'dtype', an array 'shape' and a two-element 'data_offsets'");
        }

        ElementType type = dtype.GetString() switch
        {
            "F16" => ElementType.Float16,
            "BF16" => ElementType.BFloat16,
            "F32" => ElementType.Float32,
            "F64" => ElementType.Float64,
            "I8" => ElementType.Int8,
            "U8" => ElementType.UInt8,
            "BOOL" => ElementType.Bool,
            "I16" => ElementType.Int16,
            "U16" => ElementType.UInt16,
            "I32" => ElementType.Int32,
            "U32" => ElementType.UInt32,
            "I64" => ElementType.Int64,
            "U64" => ElementType.UInt64,
            var other => throw context.Error(TensorFileErrorKind.UnsupportedType, 8, $"unsupported dtype '{other}'"),
        };

        if (shape.GetArrayLength() > 64)
        {
            throw context.Error(TensorFileErrorKind.BadShape, 8, "more than 64 dimensions");
        }

        long[] dims = new long[shape.GetArrayLength()];
        int a = 0;
        foreach (JsonElement dim in shape.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out dims[a]))
            {
                throw context.Error(TensorFileErrorKind.BadShape, 8, "shape entries must be non-negative integers");
            }

            a++;
        }

        long count = Payload.CheckedElementCount(dims, type, context, 8);
        if (!offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end) || begin < 0 || end < begin)
        {
            throw context.Error(TensorFileErrorKind.BadHeader, 8, "data_offsets must be two integers 0 <= begin <= end");
        }

        if (end > dataLength)
        {
            throw context.Error(TensorFileErrorKind.Truncated, 8, $"data_offsets end at {end} but the data section holds {dataLength} bytes");
        }

        if (end - begin != count * Payload.SizeOf(type))
        {
            throw context.Error(TensorFileErrorKind.SizeMismatch, 8,
                $"data_offsets span {end - begin} bytes but shape [{string.Join(", ", dims)}] of {dtype.GetString()} needs {count * Payload.SizeOf(type)}");
        }

        return new Entry(property.Name, type, dims, count, begin, end);
    }

    private static string DTypeName(ElementType type) => type switch
    {
        ElementType.Float32 => "F32",
        ElementType.Float64 => "F64",
        ElementType.Int32 => "I32",
        _ => "I64",
    };

    private static FileStream Open(string path) => Files.OpenRead(path);

    /// <summary>A read-only view of the next <c>length</c> bytes of a stream.</summary>
    private sealed class BoundedStream(Stream inner, long length) : Stream
    {
        private long _left = length;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_left <= 0)
            {
                return 0;
            }

            int n = inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
