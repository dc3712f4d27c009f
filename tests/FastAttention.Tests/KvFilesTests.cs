using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// Key/value tensors read from files into a storage type (NumpyFile / NpzFile / SafeTensorsFile.ReadKv): a file already in
/// the asked type is wrapped bit for bit, anything else is widened or encoded exactly as KvTensor.Encode would, and untrusted
/// files fail with the documented TensorFileException.
/// </summary>
public class KvFilesTests
{
    private static readonly float[] Base = [.. Enumerable.Range(0, 24).Select(i => (float)((i - 7.5) * 0.25))];

    /// <summary>float16 values that a widening or re-rounding reader would still give back, plus the awkward ones: subnormals, -0, the largest finite.</summary>
    private static readonly Half[] Halves =
    [
        (Half)0.1f, (Half)(-1.5f), Half.Epsilon, -Half.Epsilon, BitConverter.UInt16BitsToHalf(0x03ff), Half.NegativeZero, Half.MaxValue, Half.MinValue,
        (Half)3.14159f, (Half)(-2.71828f), (Half)1e-3f, (Half)1000f,
    ];

    [Fact]
    public void A_little_endian_float16_npy_read_as_f16_is_wrapped_bit_for_bit()
    {
        string path = WriteNpy("<f2", "(3, 4)", Bytes(Halves, bigEndian: false));
        KvTensorData read = NumpyFile.ReadKv(path, KvElementType.Float16);
        Assert.Equal(KvElementType.Float16, read.Tensor.ElementType);
        Assert.False(read.Converted);
        Assert.Equal("float16", read.FileType);
        Assert.Equal([3, 4], read.Shape);
        Assert.Equal(4, read.Tensor.RowLength);
        Assert.Equal(Bytes(Halves, bigEndian: false), StoredBytes(read.Tensor));
    }

    [Fact]
    public void A_big_endian_float16_npy_is_swapped_and_wrapped()
    {
        string path = WriteNpy(">f2", "(2, 6)", Bytes(Halves, bigEndian: true));
        KvTensorData read = NumpyFile.ReadKv(path, KvElementType.Float16);
        Assert.False(read.Converted);
        Assert.Equal([2, 6], read.Shape);
        Assert.Equal(Bytes(Halves, bigEndian: false), StoredBytes(read.Tensor));
    }

    [Fact]
    public void A_fortran_order_float16_npy_comes_back_in_c_order()
    {
        // C order [[h0 h1 h2], [h3 h4 h5]] stored column by column: h0 h3 h1 h4 h2 h5.
        Half[] c = Halves[..6];
        Half[] fortran = [c[0], c[3], c[1], c[4], c[2], c[5]];
        string path = WriteNpy("<f2", "(2, 3)", Bytes(fortran, bigEndian: false), fortranOrder: true);
        KvTensorData read = NumpyFile.ReadKv(path, KvElementType.Float16);
        Assert.Equal(Bytes(c, bigEndian: false), StoredBytes(read.Tensor));
    }

    [Theory]
    [InlineData(KvElementType.Float16)]
    [InlineData(KvElementType.BFloat16)]
    [InlineData(KvElementType.Q8)]
    public void A_float32_npy_asked_as_a_low_precision_type_is_encoded_as_KvTensor_Encode_does(KvElementType type)
    {
        string dir = Data.TempDir(), path = Path.Combine(dir, "k.npy");
        float[] values = Gaussian(7 * 59, seed: 3);
        NumpyFile.Write(path, new TensorData<float>(values, 7, 59));
        KvTensorData read = NumpyFile.ReadKv(path, type);
        Assert.True(read.Converted);
        Assert.Equal("float32", read.FileType);
        Assert.Equal(type, read.Tensor.ElementType);
        Assert.Equal(59, read.Tensor.RowLength);
        KvTensor expected = KvTensor.Encode(values, 59, type);
        Assert.Equal(StoredBytes(expected), StoredBytes(read.Tensor));
        Assert.Equal(expected.Q8Scales.ToArray(), read.Tensor.Q8Scales.ToArray());
        Assert.Equal(expected.ToFloat32(), read.Tensor.ToFloat32());
    }

    [Fact]
    public void A_float32_npy_asked_as_f32_is_wrapped_and_the_same_as_ReadFloat32()
    {
        string path = Data.Fixture("formats", "f4.npy");
        KvTensorData read = NumpyFile.ReadKv(path, KvElementType.Float32);
        Assert.False(read.Converted);
        Assert.Equal([2, 3, 4], read.Shape);
        Assert.Equal(Base, read.Tensor.ToFloat32());
        Assert.Equal(NumpyFile.ReadFloat32(path).Data, read.Tensor.ToFloat32());
    }

    [Fact]
    public void A_float16_npy_asked_as_another_type_is_widened_exactly_first()
    {
        string path = WriteNpy("<f2", "(3, 4)", Bytes(Halves, bigEndian: false));
        float[] widened = [.. Halves.Select(h => (float)h)];

        KvTensorData f32 = NumpyFile.ReadKv(path, KvElementType.Float32);
        Assert.True(f32.Converted);
        Assert.Equal(KvElementType.Float32, f32.Tensor.ElementType);
        Assert.Equal(widened.Select(BitConverter.SingleToInt32Bits), f32.Tensor.ToFloat32().Select(BitConverter.SingleToInt32Bits));

        foreach (KvElementType type in new[] { KvElementType.BFloat16, KvElementType.Q8 })
        {
            KvTensorData other = NumpyFile.ReadKv(path, type);
            Assert.True(other.Converted);
            Assert.Equal(KvTensor.Encode(widened, 4, type).ToFloat32(), other.Tensor.ToFloat32());
        }
    }

    [Fact]
    public void The_fixture_files_read_into_every_type()
    {
        foreach (string name in new[] { "f2.npy", "f4.npy", "f8.npy", "f4_big_endian.npy", "f4_fortran.npy" })
        {
            foreach (KvElementType type in Enum.GetValues<KvElementType>())
            {
                KvTensorData read = NumpyFile.ReadKv(Data.Fixture("formats", name), type);
                Assert.Equal([2, 3, 4], read.Shape);
                Assert.Equal(KvTensor.Encode(Base, 4, type).ToFloat32(), read.Tensor.ToFloat32());
            }
        }
    }

    [Theory]
    [InlineData("f16", KvElementType.Float16, false)]
    [InlineData("bf16", KvElementType.BFloat16, false)]
    [InlineData("f32", KvElementType.Float32, false)]
    [InlineData("f32", KvElementType.BFloat16, true)]
    [InlineData("f64", KvElementType.Float16, true)]
    [InlineData("bf16", KvElementType.Float16, true)]
    [InlineData("f16", KvElementType.Q8, true)]
    public void Safetensors_entries_read_into_a_type(string name, KvElementType type, bool converted)
    {
        KvTensorData read = SafeTensorsFile.ReadKv(Data.Fixture("formats", "mixed.safetensors"), name, type);
        Assert.Equal(type, read.Tensor.ElementType);
        Assert.Equal(converted, read.Converted);
        Assert.Equal([2, 3, 4], read.Shape);
        Assert.Equal(KvTensor.Encode(Base, 4, type).ToFloat32(), read.Tensor.ToFloat32());
    }

    [Fact]
    public void Safetensors_F16_and_BF16_entries_are_wrapped_bit_for_bit()
    {
        ushort[] bf16 = [0x3f80, 0xbf80, 0x0001, 0x8000, 0x7f7f, 0xff7f, 0x4049, 0x3dcd];
        byte[] halves = Bytes(Halves[..8], bigEndian: false), brains = MemoryMarshal.AsBytes(bf16.AsSpan()).ToArray();
        string path = WriteSafetensors(
            ("k", "F16", "[2, 4]", halves),
            ("v", "BF16", "[4, 2]", brains));
        KvTensorData k = SafeTensorsFile.ReadKv(path, "k", KvElementType.Float16);
        KvTensorData v = SafeTensorsFile.ReadKv(path, "v", KvElementType.BFloat16);
        Assert.False(k.Converted);
        Assert.False(v.Converted);
        Assert.Equal("bfloat16", v.FileType);
        Assert.Equal([4, 2], v.Shape);
        Assert.Equal(2, v.Tensor.RowLength);
        Assert.Equal(halves, StoredBytes(k.Tensor));
        Assert.Equal(brains, StoredBytes(v.Tensor));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Npz_float16_entries_read_as_f16_stored_or_compressed(bool compress)
    {
        string dir = Data.TempDir(), path = Path.Combine(dir, "kv.npz");
        byte[] npy = File.ReadAllBytes(WriteNpy("<f2", "(3, 4)", Bytes(Halves, bigEndian: false)));
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using Stream entry = zip.CreateEntry("k.npy", compress ? CompressionLevel.Optimal : CompressionLevel.NoCompression).Open();
            entry.Write(npy);
        }

        KvTensorData read = NpzFile.ReadKv(path, "k", KvElementType.Float16);
        Assert.False(read.Converted);
        Assert.Equal(Bytes(Halves, bigEndian: false), StoredBytes(read.Tensor));
        Assert.Equal(TensorFileErrorKind.TensorNotFound, Assert.Throws<TensorFileException>(() => NpzFile.ReadKv(path, "v", KvElementType.Float16)).Kind);
    }

    [Fact]
    public void Every_truncation_of_a_float16_npy_is_a_tensor_file_error()
    {
        byte[] bytes = File.ReadAllBytes(WriteNpy("<f2", "(3, 4)", Bytes(Halves, bigEndian: false)));
        string dir = Data.TempDir();
        for (int length = 0; length < bytes.Length; length++)
        {
            string path = Path.Combine(dir, $"cut{length}.npy");
            File.WriteAllBytes(path, bytes[..length]);
            foreach (KvElementType type in Enum.GetValues<KvElementType>())
            {
                var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadKv(path, type));
                Assert.Equal(path, ex.FilePath);
            }
        }
    }

    [Theory]
    [InlineData("<f2", "(4294967296, 4294967296)", TensorFileErrorKind.BadShape)] // more elements than any array holds
    [InlineData("<f2", "(2147483647, 2147483647, 4)", TensorFileErrorKind.BadShape)]
    [InlineData("<f2", "(-1, 4)", TensorFileErrorKind.BadShape)]
    [InlineData("<f2", "(1000000000, 2)", TensorFileErrorKind.Truncated)] // a 4 GB claim over a 24-byte payload: refused before any allocation
    [InlineData("<f2", "(4, 0)", TensorFileErrorKind.BadShape)] // rows of no elements
    [InlineData("<f2", "()", TensorFileErrorKind.BadShape)] // a scalar has no rows
    [InlineData("<f2", "(3, x)", TensorFileErrorKind.BadShape)]
    [InlineData("<c8", "(3, 4)", TensorFileErrorKind.UnsupportedType)]
    public void Untrusted_npy_headers_fail_with_the_documented_kind(string descr, string shape, TensorFileErrorKind kind)
    {
        string path = WriteNpy(descr, shape, Bytes(Halves, bigEndian: false));
        foreach (KvElementType type in Enum.GetValues<KvElementType>())
        {
            var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadKv(path, type));
            Assert.Equal(kind, ex.Kind);
        }
    }

    [Fact]
    public void Garbled_npy_headers_and_payloads_fail_with_the_documented_kind()
    {
        string dir = Data.TempDir();
        byte[] good = File.ReadAllBytes(WriteNpy("<f2", "(3, 4)", Bytes(Halves, bigEndian: false)));

        byte[] magic = [.. good];
        magic[1] = (byte)'X';
        Assert.Equal(TensorFileErrorKind.NotThisFormat, Fails(magic));

        byte[] header = [.. good];
        header[11] = (byte)'#';
        Assert.Equal(TensorFileErrorKind.BadHeader, Fails(header));

        byte[] hugeHeader = [.. good];
        hugeHeader[6] = 2;
        BinaryPrimitives.WriteUInt32LittleEndian(hugeHeader.AsSpan(8), uint.MaxValue);
        Assert.Equal(TensorFileErrorKind.HeaderTooLarge, Fails(hugeHeader));

        Assert.Equal(TensorFileErrorKind.SizeMismatch, Fails([.. good, 0, 0]));

        TensorFileErrorKind Fails(byte[] bytes)
        {
            string path = Path.Combine(dir, Guid.NewGuid().ToString("N") + ".npy");
            File.WriteAllBytes(path, bytes);
            return Assert.Throws<TensorFileException>(() => NumpyFile.ReadKv(path, KvElementType.Float16)).Kind;
        }
    }

    [Fact]
    public void Values_the_type_cannot_hold_are_a_tensor_file_error_naming_the_value()
    {
        string dir = Data.TempDir(), path = Path.Combine(dir, "big.npy");
        NumpyFile.Write(path, new TensorData<float>([1f, 2f, 1e6f, 3f], 2, 2));
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadKv(path, KvElementType.Float16));
        Assert.Equal(TensorFileErrorKind.UnsupportedType, ex.Kind);
        Assert.Contains("65504", ex.Message);
        Assert.Contains("[1, 0]", ex.Message);
        Assert.IsType<ArgumentException>(ex.InnerException);
        Assert.Equal(1e6f, NumpyFile.ReadKv(path, KvElementType.BFloat16).Tensor.ToFloat32()[2], 1e6f / 256);

        string nan = Path.Combine(dir, "nan.npy");
        NumpyFile.Write(nan, new TensorData<float>([1f, float.NaN], 1, 2));
        Assert.Equal(TensorFileErrorKind.UnsupportedType, Assert.Throws<TensorFileException>(() => NumpyFile.ReadKv(nan, KvElementType.Q8)).Kind);
        Assert.True(float.IsNaN(NumpyFile.ReadKv(nan, KvElementType.Float16).Tensor.ToFloat32()[1])); // f16 holds NaN; attention rejects it later
    }

    [Fact]
    public void Untrusted_safetensors_entries_fail_with_the_documented_kind()
    {
        byte[] halves = Bytes(Halves, bigEndian: false);
        Assert.Equal(TensorFileErrorKind.SizeMismatch, SafetensorsFails(("k", "F16", "[4, 4]", halves))); // the span does not hold the shape
        Assert.Equal(TensorFileErrorKind.BadShape, SafetensorsFails(("k", "F16", "[4294967296, 4294967296]", halves)));
        Assert.Equal(TensorFileErrorKind.BadShape, SafetensorsFails(("k", "F16", "[]", halves[..2])));
        Assert.Equal(TensorFileErrorKind.BadShape, SafetensorsFails(("k", "F16", "[3, 0]", [])));
        Assert.Equal(TensorFileErrorKind.UnsupportedType, SafetensorsFails(("k", "F8_E4M3", "[3, 4]", halves[..12])));

        string path = WriteSafetensors(("k", "F16", "[3, 4]", halves));
        byte[] bytes = File.ReadAllBytes(path);
        string dir = Data.TempDir();
        for (int length = 0; length < bytes.Length; length++)
        {
            string cut = Path.Combine(dir, $"cut{length}.safetensors");
            File.WriteAllBytes(cut, bytes[..length]);
            Assert.Throws<TensorFileException>(() => SafeTensorsFile.ReadKv(cut, "k", KvElementType.Float16));
        }

        Assert.Equal(TensorFileErrorKind.TensorNotFound, Assert.Throws<TensorFileException>(() => SafeTensorsFile.ReadKv(path, "v", KvElementType.Float16)).Kind);

        static TensorFileErrorKind SafetensorsFails((string Name, string DType, string Shape, byte[] Data) entry)
        {
            string path = WriteSafetensors(entry);
            return Assert.Throws<TensorFileException>(() => SafeTensorsFile.ReadKv(path, entry.Name, KvElementType.Float16)).Kind;
        }
    }

    [Fact]
    public void An_unknown_type_is_an_argument_error()
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => NumpyFile.ReadKv(Data.Fixture("formats", "f2.npy"), (KvElementType)9));
        Assert.Equal("target", ex.ParamName);
    }

    [Fact]
    public void Attention_on_a_float16_file_read_as_f16_matches_the_float64_reference_on_its_values()
    {
        // Read without re-rounding, the stored values are the file's: the typed call must then be within float32 tolerance of
        // exact attention on them (not merely within the storage bound of some other values).
        var random = new Random(5);
        Half[] k = [.. Enumerable.Range(0, 33 * 15).Select(_ => (Half)((random.NextSingle() * 2) - 1))];
        Half[] v = [.. Enumerable.Range(0, 33 * 15).Select(_ => (Half)((random.NextSingle() * 2) - 1))];
        float[] q = Gaussian(7 * 15, seed: 6);
        KvTensorData key = NumpyFile.ReadKv(WriteNpy("<f2", "(33, 15)", Bytes(k, bigEndian: false)), KvElementType.Float16);
        KvTensorData value = NumpyFile.ReadKv(WriteNpy("<f2", "(33, 15)", Bytes(v, bigEndian: false)), KvElementType.Float16);
        var shape = new AttentionShape(1, 1, 7, 33, 15, 15);
        var typed = new float[shape.OutputLength];
        AttentionRun run;
        try
        {
            run = ExactAttention.Compute(q, key.Tensor, value.Tensor, shape, typed);
        }
        catch (NotSupportedException ex) when (ex.Message.StartsWith("No attention kernel fits", StringComparison.Ordinal))
        {
            return; // the float16 kernels are not on this branch yet; the file half is tested above
        }

        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q, [.. k.Select(h => (float)h)], [.. v.Select(h => (float)h)], shape, reference);
        for (int i = 0; i < typed.Length; i++)
        {
            Assert.True(Math.Abs(typed[i] - reference[i]) <= 1e-5 + (1e-5 * Math.Abs(reference[i])), $"[{i}] {typed[i]} vs {reference[i]}");
        }

        Assert.True(run.KvBound!.Absolute > 0);
    }

    /// <summary>The bytes the tensor holds as stored (q8: the values; the scales are compared apart).</summary>
    private static unsafe byte[] StoredBytes(KvTensor tensor)
    {
        using KvTensor.Pinned pinned = tensor.Pin();
        long bytes = (long)tensor.Length * KvElementTypes.SizeOf(tensor.ElementType);
        return new ReadOnlySpan<byte>(pinned.Operand.Data, (int)bytes).ToArray();
    }

    internal static byte[] Bytes(Half[] values, bool bigEndian)
    {
        var bytes = new byte[2 * values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            ushort bits = BitConverter.HalfToUInt16Bits(values[i]);
            if (bigEndian)
            {
                BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(2 * i), bits);
            }
            else
            {
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), bits);
            }
        }

        return bytes;
    }

    private static float[] Gaussian(int count, int seed)
    {
        var values = new float[count];
        SeededGaussian.Fill(new Random(seed), values);
        return values;
    }

    /// <summary>A version 1.0 .npy file with the given header fields and payload bytes, as NumPy lays it out.</summary>
    internal static string WriteNpy(string descr, string shape, byte[] payload, bool fortranOrder = false)
    {
        string dict = $"{{'descr': '{descr}', 'fortran_order': {(fortranOrder ? "True" : "False")}, 'shape': {shape}, }}";
        int total = (10 + dict.Length + 1 + 63) / 64 * 64;
        string header = dict.PadRight(total - 10 - 1) + "\n";
        var bytes = new List<byte> { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0, (byte)(header.Length & 0xff), (byte)(header.Length >> 8) };
        bytes.AddRange(Encoding.Latin1.GetBytes(header));
        bytes.AddRange(payload);
        string path = Path.Combine(Data.TempDir(), "t.npy");
        File.WriteAllBytes(path, [.. bytes]);
        return path;
    }

    /// <summary>A safetensors file with the given entries, their data in order.</summary>
    private static string WriteSafetensors(params (string Name, string DType, string Shape, byte[] Data)[] entries)
    {
        var json = new StringBuilder("{");
        long offset = 0;
        foreach ((string name, string dtype, string shape, byte[] data) in entries)
        {
            json.Append(json.Length > 1 ? ", " : string.Empty).Append($"\"{name}\": {{\"dtype\": \"{dtype}\", \"shape\": {shape}, \"data_offsets\": [{offset}, {offset + data.Length}]}}");
            offset += data.Length;
        }

        json.Append('}');
        while (json.Length % 8 != 0)
        {
            json.Append(' ');
        }

        var bytes = new List<byte>(new byte[8]);
        BinaryPrimitives.WriteUInt64LittleEndian(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes), (ulong)json.Length);
        bytes.AddRange(Encoding.UTF8.GetBytes(json.ToString()));
        foreach ((_, _, _, byte[] data) in entries)
        {
            bytes.AddRange(data);
        }

        string path = Path.Combine(Data.TempDir(), "t.safetensors");
        File.WriteAllBytes(path, [.. bytes]);
        return path;
    }
}
