using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class NumpySliceTests
{
    /// <summary>The rows of <paramref name="ranges"/> of every leading index of a C-order [lead, n, d] array, the obvious way.</summary>
    private static float[] Expected(float[] all, long lead, long n, long d, IReadOnlyList<(long Start, long Count)> ranges)
    {
        var rows = new List<float>();
        for (long b = 0; b < lead; b++)
        {
            foreach ((long start, long count) in ranges)
            {
                rows.AddRange(all.AsSpan((int)(((b * n) + start) * d), (int)(count * d)).ToArray());
            }
        }

        return [.. rows];
    }

    public static TheoryData<int[], long, long> Slices() => new()
    {
        { [7, 3], 2, 4 },
        { [1, 5], 0, 1 },
        { [2, 3, 13, 4], 5, 0 },
        { [4, 1, 1], 0, 1 },
        { [3, 31, 8], 30, 1 },
    };

    [Theory]
    [MemberData(nameof(Slices))]
    public void ReadRows_returns_the_ranges_rows_of_every_leading_index(int[] shape, long start, long count)
    {
        string dir = Data.TempDir();
        string path = Path.Combine(dir, "x.npy");
        float[] all = Data.Normal(shape.Aggregate(1L, (a, x) => a * x), 3);
        NumpyFile.Write(path, new TensorData<float>(all, shape));
        long n = shape[^2], d = shape[^1], lead = all.Length / (n * d);
        (long, long)[] ranges = [(start, count), (0, 0), (n - 1, 1)];

        TensorData<float> rows = NumpyFile.ReadRows(path, ranges);

        int[] expectedShape = [.. shape];
        expectedShape[^2] = (int)(count + 1);
        Assert.Equal(expectedShape, rows.Shape);
        Assert.Equal(Expected(all, lead, n, d, ranges), rows.Data);
        Assert.Equal(shape, NumpyFile.ReadShape(path));
    }

    [Theory]
    [InlineData("f4.npy")]
    [InlineData("f8.npy")]
    [InlineData("f2.npy")]
    [InlineData("f4_big_endian.npy")]
    [InlineData("f8_big_endian.npy")]
    [InlineData("f4_v2.npy")]
    [InlineData("f4_v3.npy")]
    [InlineData("i4.npy")]
    public void ReadRows_converts_what_ReadFloat32_converts(string name)
    {
        string path = Data.Fixture("formats", name);
        TensorData<float> whole = NumpyFile.ReadFloat32(path);
        TensorData<float> rows = NumpyFile.ReadRows(path, [(1, 2)]);
        Assert.Equal([2, 2, 4], rows.Shape);
        Assert.Equal(Expected(whole.Data, 2, 3, 4, [(1, 2)]), rows.Data);
    }

    [Fact]
    public void Fortran_order_scalars_and_vectors_are_refused_naming_the_file()
    {
        var fortran = Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(Data.Fixture("formats", "f4_fortran.npy"), [(0, 1)]));
        Assert.Equal(TensorFileErrorKind.UnsupportedLayout, fortran.Kind);
        Assert.Contains("f4_fortran.npy", fortran.Message, StringComparison.Ordinal);
        var scalar = Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(Data.Fixture("formats", "scalar.npy"), [(0, 0)]));
        Assert.Equal(TensorFileErrorKind.BadShape, scalar.Kind);
    }

    [Theory]
    [InlineData(6, 2)]
    [InlineData(-1, 1)]
    [InlineData(0, 8)]
    [InlineData(3, -1)]
    public void A_range_outside_the_rows_is_a_bad_shape_naming_the_file(long start, long count)
    {
        string path = Path.Combine(Data.TempDir(), "r.npy");
        NumpyFile.Write(path, new TensorData<float>(new float[14], 7, 2));
        var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(path, [(start, count)]));
        Assert.Equal(TensorFileErrorKind.BadShape, ex.Kind);
        Assert.Contains("r.npy", ex.Message, StringComparison.Ordinal);
        Assert.Contains("outside the 7 rows", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_truncated_or_padded_file_fails_before_any_row_is_read()
    {
        string dir = Data.TempDir();
        string path = Path.Combine(dir, "t.npy");
        NumpyFile.Write(path, new TensorData<float>(Data.Normal(40, 1), 10, 4));
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);
        var truncated = Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(path, [(0, 1)]));
        Assert.Equal(TensorFileErrorKind.Truncated, truncated.Kind);
        File.WriteAllBytes(path, [.. bytes, 0, 0, 0, 0]);
        Assert.Equal(TensorFileErrorKind.SizeMismatch, Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(path, [(0, 1)])).Kind);
        File.WriteAllBytes(path, bytes[..40]);
        Assert.Equal(TensorFileErrorKind.Truncated, Assert.Throws<TensorFileException>(() => NumpyFile.ReadShape(path)).Kind);
        Assert.Equal(TensorFileErrorKind.Io, Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(Path.Combine(dir, "missing.npy"), [(0, 1)])).Kind);
    }

    [Fact]
    public void A_huge_or_overflowing_shape_is_refused_without_a_huge_allocation()
    {
        string path = Path.Combine(Data.TempDir(), "h.npy");
        foreach (string shape in new[] { "(4294967296, 4294967296)", "(2147483647, 2147483647, 2147483647)", "(-3, 4)" })
        {
            string dict = $"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".PadRight(117) + "\n";
            File.WriteAllBytes(path, [0x93, .. "NUMPY"u8, 1, 0, (byte)dict.Length, 0, .. System.Text.Encoding.Latin1.GetBytes(dict)]);
            var ex = Assert.Throws<TensorFileException>(() => NumpyFile.ReadRows(path, [(0, 1)]));
            Assert.True(ex.Kind is TensorFileErrorKind.BadShape or TensorFileErrorKind.Truncated, ex.Message);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void Writers_of_disjoint_slices_make_the_file_Write_makes_byte_for_byte(int writers)
    {
        string dir = Data.TempDir();
        int[] shape = [2, 3, 7, 5];
        float[] all = Data.Normal(2 * 3 * 7 * 5, 9);
        string whole = Path.Combine(dir, "whole.npy");
        NumpyFile.Write(whole, new TensorData<float>(all, shape));

        // Zig-zag-like pieces: writer w holds rows of pieces w and 2W-1-w of 2W (some of them empty when 7 < 2W).
        string temp = Path.Combine(dir, ".out.tmp");
        string destination = Path.Combine(dir, "out.npy");
        using (NumpySliceWriter owner = NumpySliceWriter.Create(temp, shape))
        {
            for (int w = 0; w < writers; w++)
            {
                (long, long)[] ranges = [Piece(7, w, 2 * writers), Piece(7, (2 * writers) - 1 - w, 2 * writers)];
                float[] rows = Expected(all, 6, 7, 5, ranges);
                if (w == 0)
                {
                    owner.WriteRows(rows, ranges);
                    continue;
                }

                using NumpySliceWriter other = NumpySliceWriter.Open(temp, shape);
                other.WriteRows(rows, ranges);
            }

            Assert.False(File.Exists(destination));
            owner.Commit(destination, overwrite: false);
        }

        Assert.False(File.Exists(temp));
        Assert.Equal(File.ReadAllBytes(whole), File.ReadAllBytes(destination));
    }

    private static (long, long) Piece(long n, int index, int pieces) => (n * index / pieces, (n * (index + 1) / pieces) - (n * index / pieces));

    [Fact]
    public void An_owner_disposed_without_commit_deletes_its_file_and_a_participant_does_not()
    {
        string temp = Path.Combine(Data.TempDir(), ".o.tmp");
        using (NumpySliceWriter owner = NumpySliceWriter.Create(temp, [4, 2]))
        {
            NumpySliceWriter.Open(temp, [4, 2]).Dispose();
            Assert.True(File.Exists(temp));
            Assert.Throws<InvalidOperationException>(() => NumpySliceWriter.Open(temp, [4, 2]).Commit(temp + ".npy", false));
        }

        Assert.False(File.Exists(temp));
    }

    [Fact]
    public void Bad_writes_and_mismatched_files_are_refused_naming_the_parameter()
    {
        string dir = Data.TempDir();
        string temp = Path.Combine(dir, ".w.tmp");
        using NumpySliceWriter owner = NumpySliceWriter.Create(temp, [2, 4, 3]);
        Assert.Equal("rows", Assert.Throws<ArgumentException>(() => owner.WriteRows(new float[5], [(0, 1)])).ParamName);
        Assert.Equal("ranges", Assert.Throws<ArgumentException>(() => owner.WriteRows(new float[6], [(4, 1)])).ParamName);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => NumpySliceWriter.Create(Path.Combine(dir, "v"), [3])).ParamName);
        var mismatch = Assert.Throws<TensorFileException>(() => NumpySliceWriter.Open(temp, [2, 4, 4]));
        Assert.Equal(TensorFileErrorKind.BadHeader, mismatch.Kind);
        Assert.Contains(".w.tmp", mismatch.Message, StringComparison.Ordinal);
        string f8 = Path.Combine(dir, "f8.npy");
        NumpyFile.Write(f8, new TensorData<double>(new double[24], 2, 4, 3));
        Assert.Equal(TensorFileErrorKind.BadHeader, Assert.Throws<TensorFileException>(() => NumpySliceWriter.Open(f8, [2, 4, 3])).Kind);
    }

    [Fact]
    public void A_commit_onto_an_existing_file_without_overwrite_fails_and_deletes_the_temp_file()
    {
        string dir = Data.TempDir();
        string temp = Path.Combine(dir, ".c.tmp"), destination = Path.Combine(dir, "c.npy");
        File.WriteAllText(destination, "keep");
        var owner = NumpySliceWriter.Create(temp, [1, 1]);
        Assert.Throws<IOException>(() => owner.Commit(destination, overwrite: false));
        Assert.False(File.Exists(temp));
        Assert.Equal("keep", File.ReadAllText(destination));
        Assert.Throws<ObjectDisposedException>(() => owner.WriteRows(new float[1], [(0, 1)]));
    }
}
