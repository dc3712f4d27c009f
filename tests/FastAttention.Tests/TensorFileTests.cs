using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class TensorFileTests
{
    private static readonly float[] Base = [.. Enumerable.Range(0, 24).Select(i => (float)((i - 7.5) * 0.25))];

    private static string Format(string name) => Data.Fixture("formats", name);

    [Theory]
    [InlineData("f4.npy")]
    [InlineData("f8.npy")]
    [InlineData("f2.npy")]
    [InlineData("f4_big_endian.npy")]
    [InlineData("f8_big_endian.npy")]
    [InlineData("f4_fortran.npy")]
    [InlineData("f4_v2.npy")]
    [InlineData("f4_v3.npy")]
    public void Numpy_written_float_files_read_as_float32(string name)
    {
        TensorData<float> t = NumpyFile.ReadFloat32(Format(name));
        Assert.Equal([2, 3, 4], t.Shape);
        Assert.Equal(Base, t.Data);
    }

    [Theory]
    [InlineData("i4.npy", -5)]
    [InlineData("i8.npy", -5)]
    [InlineData("u1.npy", 0)]
    public void Integer_files_read_as_int64(string name, long first)
    {
        TensorData<long> t = NumpyFile.ReadInt64(Format(name));
        Assert.Equal([2, 3, 4], t.Shape);
        Assert.Equal(Enumerable.Range(0, 24).Select(i => i + first), t.Data);
    }

    [Fact]
    public void Float_file_read_as_index_array_is_a_type_error()
    {
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadInt64(Format("f4.npy")));
        Assert.Equal(TensorFileErrorKind.UnsupportedType, ex.Kind);
        Assert.Contains("f4.npy", ex.Message);
    }

    [Fact]
    public void Scalar_and_empty_arrays_read_with_their_shapes()
    {
        TensorData<float> scalar = NumpyFile.ReadFloat32(Format("scalar.npy"));
        Assert.Empty(scalar.Shape);
        Assert.Equal([2.5f], scalar.Data);
        TensorData<float> empty = NumpyFile.ReadFloat32(Format("empty.npy"));
        Assert.Equal([0, 4], empty.Shape);
        Assert.Empty(empty.Data);
    }

    [Fact]
    public void Npz_stored_and_compressed_read_by_name()
    {
        Assert.Equal(["base", "index"], NpzFile.Names(Format("stored.npz")));
        Assert.Equal(Base, NpzFile.ReadFloat32(Format("stored.npz"), "base").Data);
        Assert.Equal(Base, NpzFile.ReadFloat32(Format("compressed.npz"), "base.npy").Data);
        Assert.Equal([0L, 1, 2, 3, 4], NpzFile.ReadInt64(Format("compressed.npz"), "index").Data);
        var ex = Assert.Throws<TensorFileException>(() => NpzFile.ReadFloat32(Format("stored.npz"), "nope"));
        Assert.Equal(TensorFileErrorKind.TensorNotFound, ex.Kind);
        Assert.Equal("nope", ex.TensorName);
        Assert.Contains("base", ex.Message);
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("f64")]
    [InlineData("f16")]
    [InlineData("bf16")]
    public void Safetensors_dtypes_read_as_float32(string name)
    {
        TensorData<float> t = SafeTensorsFile.ReadFloat32(Format("mixed.safetensors"), name);
        Assert.Equal([2, 3, 4], t.Shape);
        Assert.Equal(Base, t.Data);
    }

    [Fact]
    public void Safetensors_names_metadata_and_indices()
    {
        string path = Format("mixed.safetensors");
        Assert.Equal(["f32", "f64", "f16", "bf16", "i64"], SafeTensorsFile.Names(path));
        Assert.Equal("pt", SafeTensorsFile.Metadata(path)["format"]);
        Assert.Equal([0L, 1, 2, 3, 4], SafeTensorsFile.ReadInt64(path, "i64").Data);
        Assert.Equal(TensorFileErrorKind.TensorNotFound, Assert.Throws<TensorFileException>(() => SafeTensorsFile.ReadFloat32(path, "x")).Kind);
    }

    [Fact]
    public void Writers_round_trip_through_every_format()
    {
        string dir = Data.TempDir();
        var f = new TensorData<float>([.. Base], 2, 3, 4);
        var l = new TensorData<long>([5, -1, long.MaxValue], 3);
        var d = new TensorData<double>([Math.PI], 1);

        NumpyFile.Write(Path.Combine(dir, "f.npy"), f);
        NumpyFile.Write(Path.Combine(dir, "l.npy"), l);
        NumpyFile.Write(Path.Combine(dir, "d.npy"), d);
        Assert.Equal(Base, NumpyFile.ReadFloat32(Path.Combine(dir, "f.npy")).Data);
        Assert.Equal(l.Data, NumpyFile.ReadInt64(Path.Combine(dir, "l.npy")).Data);
        Assert.Equal(Math.PI, NumpyFile.ReadFloat64(Path.Combine(dir, "d.npy")).Data[0]);
        Assert.Equal(0, new FileInfo(Path.Combine(dir, "f.npy")).Length % 16 - (24 * 4 % 16)); // header is 64-byte aligned

        foreach (bool compress in new[] { false, true })
        {
            string npz = Path.Combine(dir, $"a{compress}.npz");
            NpzFile.Write(npz, [new("f", f), new("l", l)], compress);
            Assert.Equal(Base, NpzFile.ReadFloat32(npz, "f").Data);
            Assert.Equal(l.Data, NpzFile.ReadInt64(npz, "l").Data);
        }

        string st = Path.Combine(dir, "a.safetensors");
        SafeTensorsFile.Write(st, [new("f", f), new("l", l)], new Dictionary<string, string> { ["k"] = "v" });
        Assert.Equal(Base, SafeTensorsFile.ReadFloat32(st, "f").Data);
        Assert.Equal([2, 3, 4], SafeTensorsFile.ReadFloat32(st, "f").Shape);
        Assert.Equal(l.Data, SafeTensorsFile.ReadInt64(st, "l").Data);
        Assert.Equal("v", SafeTensorsFile.Metadata(st)["k"]);
        Assert.Equal(0, (new FileInfo(st).Length - (24 * 4) - (3 * 8)) % 8);
    }

    [Fact]
    public void Every_truncation_of_an_npy_file_is_a_tensor_file_error()
    {
        byte[] bytes = File.ReadAllBytes(Format("f4.npy"));
        string dir = Data.TempDir();
        for (int length = 0; length < bytes.Length; length++)
        {
            string path = Path.Combine(dir, $"cut{length}.npy");
            File.WriteAllBytes(path, bytes[..length]);
            var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(path));
            Assert.Equal(path, ex.FilePath);
            if (length >= 128)
            {
                Assert.Equal(TensorFileErrorKind.Truncated, ex.Kind);
                Assert.Equal(length, ex.ByteOffset);
            }
        }
    }

    [Fact]
    public void Trailing_bytes_are_a_size_mismatch()
    {
        string path = Path.Combine(Data.TempDir(), "long.npy");
        File.WriteAllBytes(path, [.. File.ReadAllBytes(Format("f4.npy")), 0, 0, 0, 0]);
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(path));
        Assert.Equal(TensorFileErrorKind.SizeMismatch, ex.Kind);
        Assert.Equal(128 + 96, ex.ByteOffset);
    }

    [Fact]
    public void Garbled_files_never_crash_the_readers()
    {
        var random = new Random(1234);
        string dir = Data.TempDir();
        foreach (string name in new[] { "f4.npy", "f4_fortran.npy", "mixed.safetensors", "stored.npz", "compressed.npz" })
        {
            byte[] original = File.ReadAllBytes(Format(name));
            for (int trial = 0; trial < 300; trial++)
            {
                byte[] bytes = (byte[])original.Clone();
                int flips = random.Next(1, 4);
                for (int f = 0; f < flips; f++)
                {
                    // Bias the damage towards the header, where the parser lives.
                    int at = random.NextDouble() < 0.8 ? random.Next(Math.Min(bytes.Length, 140)) : random.Next(bytes.Length);
                    bytes[at] = (byte)random.Next(256);
                }

                string path = Path.Combine(dir, $"g{trial}{Path.GetExtension(name)}");
                File.WriteAllBytes(path, bytes);
                try
                {
                    _ = Path.GetExtension(name) switch
                    {
                        ".npy" => NumpyFile.ReadFloat32(path).ElementCount,
                        ".npz" => NpzFile.ReadAllFloat32(path).Count,
                        _ => SafeTensorsFile.ReadAllFloat32(path).Count,
                    };
                }
                catch (TensorFileException)
                {
                    // The documented failure.
                }
            }
        }
    }

    private static byte[] NpyWithHeader(string dict, int version = 1, int dataBytes = 0)
    {
        string header = dict.PadRight(((dict.Length + 12 + 63) / 64 * 64) - (version == 1 ? 10 : 12) - 1) + "\n";
        var bytes = new List<byte> { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)version, 0 };
        if (version == 1)
        {
            bytes.AddRange(BitConverter.GetBytes((ushort)header.Length));
        }
        else
        {
            bytes.AddRange(BitConverter.GetBytes((uint)header.Length));
        }

        bytes.AddRange(Encoding.Latin1.GetBytes(header));
        bytes.AddRange(new byte[dataBytes]);
        return [.. bytes];
    }

    [Theory]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }", TensorFileErrorKind.BadShape)]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }", TensorFileErrorKind.BadShape)]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 4), }", TensorFileErrorKind.BadShape)]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (30000, 30000), }", TensorFileErrorKind.Truncated)]
    [InlineData("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", TensorFileErrorKind.UnsupportedType)]
    [InlineData("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", TensorFileErrorKind.UnsupportedType)]
    [InlineData("{'descr': '<f4', 'shape': (2,), }", TensorFileErrorKind.BadHeader)]
    [InlineData("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", TensorFileErrorKind.BadHeader)]
    [InlineData("not a dict at all", TensorFileErrorKind.BadHeader)]
    public void Hostile_npy_headers_give_the_documented_error_without_huge_allocations(string dict, TensorFileErrorKind kind)
    {
        string path = Path.Combine(Data.TempDir(), "h.npy");
        File.WriteAllBytes(path, NpyWithHeader(dict, dataBytes: 8));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(path));
        Assert.Equal(kind, ex.Kind);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20, "the reader allocated by an unchecked field");

        // The same header inside a compressed .npz (size unknown up front) must not allocate by it either.
        string npz = Path.Combine(Data.TempDir(), "h.npz");
        using (var zip = ZipFile.Open(npz, ZipArchiveMode.Create))
        {
            using Stream entry = zip.CreateEntry("x.npy", CompressionLevel.Optimal).Open();
            entry.Write(NpyWithHeader(dict, dataBytes: 8));
        }

        before = GC.GetAllocatedBytesForCurrentThread();
        var zipEx = Assert.Throws<TensorFileException>(() => NpzFile.ReadFloat32(npz, "x"));
        Assert.Equal(kind, zipEx.Kind);
        Assert.Equal("x", zipEx.TensorName);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 32 << 20, "the npz reader allocated by an unchecked field");
    }

    [Fact]
    public void Oversized_npy_header_is_refused()
    {
        string path = Path.Combine(Data.TempDir(), "big.npy");
        byte[] bytes = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 2, 0, 0xFF, 0xFF, 0xFF, 0xFF, (byte)'{'];
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(path));
        Assert.Equal(TensorFileErrorKind.HeaderTooLarge, ex.Kind);
    }

    [Fact]
    public void Not_a_zip_and_not_a_npy_are_format_errors()
    {
        Assert.Equal(TensorFileErrorKind.NotThisFormat, Assert.Throws<TensorFileException>(() => NpzFile.ReadFloat32(Format("f4.npy"), "a")).Kind);
        Assert.Equal(TensorFileErrorKind.NotThisFormat, Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(Format("stored.npz"))).Kind);
        Assert.Equal(TensorFileErrorKind.Io, Assert.Throws<TensorFileException>(() => NumpyFile.ReadFloat32(Format("missing.npy"))).Kind);
    }

    private static string SafeTensorsWith(string json, int dataBytes, ulong? claimedLength = null)
    {
        byte[] header = Encoding.UTF8.GetBytes(json);
        byte[] bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, claimedLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        string path = Path.Combine(Data.TempDir(), "t.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, null, null)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1_000_000_000UL, TensorFileErrorKind.HeaderTooLarge)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 4096UL, TensorFileErrorKind.Truncated)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, null, TensorFileErrorKind.Truncated)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, null, TensorFileErrorKind.SizeMismatch)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, null, TensorFileErrorKind.SizeMismatch)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, null, TensorFileErrorKind.BadShape)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, null, TensorFileErrorKind.SizeMismatch)]
    [InlineData("{\"a\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, null, TensorFileErrorKind.UnsupportedType)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, null, TensorFileErrorKind.BadHeader)]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, null, TensorFileErrorKind.BadHeader)]
    [InlineData("[1, 2]", 8, null, TensorFileErrorKind.BadHeader)]
    [InlineData("{\"a\": oops", 8, null, TensorFileErrorKind.NotThisFormat)]
    public void Hostile_safetensors_headers_give_the_documented_error(string json, int dataBytes, ulong? claimed, TensorFileErrorKind? kind)
    {
        string path = SafeTensorsWith(json, dataBytes, claimed);
        if (kind is null)
        {
            Assert.Equal([0f, 0f], SafeTensorsFile.ReadFloat32(path, "a").Data);
            return;
        }

        var ex = Assert.Throws<TensorFileException>(() => SafeTensorsFile.ReadAllFloat32(path));
        Assert.Equal(kind, ex.Kind);
        Assert.Equal(path, ex.FilePath);
    }
}
