using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The split-key decoding kernels on keys and values stored as f32, f16, bf16 and q8, contiguous or in pages, with causal
/// masks, grouped-query heads, sliding windows and sinks: every kernel against the float64 reference on the values as stored
/// (<see cref="KvTensor.ToFloat32"/>), with the exact float32 kernels' tolerance.
/// </summary>
public unsafe class KvDecodeTests
{
    /// <summary>The split-key kernels this CPU runs, with the storage type each reads.</summary>
    private static IEnumerable<(AttentionKernel Kernel, KvElementType Type)> Kernels() =>
        KernelRegistry.Attention.Where(k => k.Name.StartsWith("splitkey-", StringComparison.Ordinal) && k.IsSupported())
            .Select(k => (k, k.Name.Split('-') is [_, _, string type] && KvElementTypes.TryParse(type, out KvElementType t) ? t : KvElementType.Float32));

    /// <summary>(kernel, nq, nk, d, heads, kvHeads, causal, window, sinks, pageRows): the awkward sizes, paged operands and windows.</summary>
    public static TheoryData<string, int, int, int, int, int, bool, int, int, int> Cases()
    {
        var shapes = new List<(int Nq, int Nk, int D, int Heads, int KvHeads, bool Causal, int Window, int Sinks, int PageRows)>();
        foreach (int d in new[] { 1, 8, 15, 59, 64, 100, 128 })
        {
            shapes.Add((1, 33, d, 2, 2, false, 0, 0, 0));
            shapes.Add((4, 1023, d, 8, 2, true, 0, 0, 0));
        }

        foreach (int nk in new[] { 1, 2, 31, 33, 1023, 2049, 4100 })
        {
            shapes.Add((1, nk, 64, 4, 1, true, 0, 0, 0));
            shapes.Add((2, nk, 15, 2, 2, false, 0, 0, 0));
        }

        // One query row per kv head over several chunks, d a multiple of the q8 block or not (the q8 one-row scores, and their fallback).
        foreach (int d in new[] { 32, 96, 128, 100 })
        {
            shapes.Add((1, 2049, d, 2, 2, true, 0, 0, 0));
        }

        shapes.Add((1, 1000, 128, 2, 2, false, 0, 0, 64));

        // Three query heads per kv head: blocks of four rows and rows left over, for every query count.
        for (int nq = 1; nq <= 16; nq++)
        {
            shapes.Add((nq, 300, 8, 6, 2, nq % 2 == 0, 0, 0, 0));
        }

        foreach (int pageRows in new[] { 16, 64 })
        {
            shapes.Add((1, 1000, 64, 8, 2, true, 0, 0, pageRows));
            shapes.Add((5, 2049, 59, 4, 4, false, 0, 0, pageRows));
            shapes.Add((3, 33, 128, 4, 1, true, 0, 0, pageRows));
            shapes.Add((2, 4100, 32, 4, 1, true, 100, 4, pageRows));
        }

        foreach ((int window, int sinks) in new[] { (1, 0), (5, 0), (5, 4), (100, 1), (1500, 40), (3000, 4) })
        {
            foreach (int nq in new[] { 1, 3 })
            {
                shapes.Add((nq, 4100, 32, 4, 1, true, window, sinks, 0));
                shapes.Add((nq, 4100, 32, 4, 1, false, window, sinks, 0));
            }
        }

        var data = new TheoryData<string, int, int, int, int, int, bool, int, int, int>();
        foreach ((AttentionKernel kernel, _) in Kernels())
        {
            foreach (var s in shapes)
            {
                data.Add(kernel.Name, s.Nq, s.Nk, s.D, s.Heads, s.KvHeads, s.Causal, s.Window, s.Sinks, s.PageRows);
            }
        }

        return data;
    }

    public static TheoryData<string> KernelNames()
    {
        var data = new TheoryData<string>();
        foreach ((AttentionKernel kernel, _) in Kernels())
        {
            data.Add(kernel.Name);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_float64_reference_on_the_stored_values(string kernel, int nq, int nk, int d, int heads, int kvHeads, bool causal, int window, int sinks, int pageRows)
    {
        (AttentionKernel k, KvElementType type) = Kernels().Single(x => x.Kernel.Name == kernel);
        var shape = new AttentionShape(1, heads, nq, nk, d, d, kvHeads);
        int seed = (nq * 31) + (nk * 7) + d + heads + window;
        float[] q = Data.Normal(shape.QueryLength, seed);
        KvTensor key = KvTensor.Encode(Data.Normal(shape.KeyLength, seed + 1), d, type);
        KvTensor value = KvTensor.Encode(Data.Normal(shape.ValueLength, seed + 2), d, type);
        float[] output = Run(k, q, key, value, shape, causal, window, sinks, pageRows, threads: 2);
        double[] expected = Expected(q, key, value, shape, causal, window, sinks);
        Tolerance.AssertExact(output, expected, $"{kernel} nq={nq} nk={nk} d={d} heads={heads}/{kvHeads} causal={causal} window={window} sinks={sinks} pages={pageRows}");
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Same_bits_for_one_and_two_threads(string kernel)
    {
        (AttentionKernel k, KvElementType type) = Kernels().Single(x => x.Kernel.Name == kernel);
        foreach ((int window, int sinks, int pageRows) in new[] { (0, 0, 0), (700, 3, 0), (0, 0, 64) })
        {
            var shape = new AttentionShape(2, 8, 3, 4100, 64, 64, 2);
            float[] q = Data.Normal(shape.QueryLength, 5);
            KvTensor key = KvTensor.Encode(Data.Normal(shape.KeyLength, 6), 64, type);
            KvTensor value = KvTensor.Encode(Data.Normal(shape.ValueLength, 7), 64, type);
            float[] one = Run(k, q, key, value, shape, true, window, sinks, pageRows, threads: 1);
            float[] two = Run(k, q, key, value, shape, true, window, sinks, pageRows, threads: 2);
            Assert.Equal(one.Select(BitConverter.SingleToInt32Bits), two.Select(BitConverter.SingleToInt32Bits));
        }
    }

    [Fact]
    public void Paged_and_contiguous_operands_give_the_same_bits_at_the_same_chunking()
    {
        // Pages of 1024 rows keep the contiguous chunk of one query row (1024 keys): the same partials, the same bits.
        foreach ((AttentionKernel k, KvElementType type) in Kernels())
        {
            var shape = new AttentionShape(1, 2, 1, 3000, 64, 64);
            float[] q = Data.Normal(shape.QueryLength, 8);
            KvTensor key = KvTensor.Encode(Data.Normal(shape.KeyLength, 9), 64, type);
            KvTensor value = KvTensor.Encode(Data.Normal(shape.ValueLength, 10), 64, type);
            float[] contiguous = Run(k, q, key, value, shape, false, 0, 0, 0, threads: 2);
            float[] paged = Run(k, q, key, value, shape, false, 0, 0, 1024, threads: 2);
            Assert.Equal(contiguous.Select(BitConverter.SingleToInt32Bits), paged.Select(BitConverter.SingleToInt32Bits));
        }
    }

    [Fact]
    public void Every_float16_and_bfloat16_bit_pattern_widens_exactly()
    {
        ushort* bits = stackalloc ushort[65536];
        for (int x = 0; x < 65536; x++)
        {
            bits[x] = (ushort)x;
        }

        foreach (KvElementType type in new[] { KvElementType.Float16, KvElementType.BFloat16 })
        {
            float Expected(int x) => type == KvElementType.Float16 ? (float)BitConverter.UInt16BitsToHalf((ushort)x) : BitConverter.Int32BitsToSingle(x << 16);
            void Check(int x, float actual, string path)
            {
                float expected = Expected(x);
                bool same = float.IsNaN(expected) ? float.IsNaN(actual) : BitConverter.SingleToInt32Bits(actual) == BitConverter.SingleToInt32Bits(expected);
                Assert.True(same, $"{type} {path}: 0x{x:x4} widened to {actual} (0x{BitConverter.SingleToInt32Bits(actual):x8}), expected {expected} (0x{BitConverter.SingleToInt32Bits(expected):x8})");
            }

            for (int x = 0; x < 65536; x++)
            {
                Check(x, KvWiden.Scalar(type, (byte*)bits, null, x), "Scalar");
            }

            if (Vector256.IsHardwareAccelerated)
            {
                for (int x = 0; x < 65536; x += 8)
                {
                    Vector256<float> v = KvWiden.Load256(type, (byte*)bits, null, x);
                    for (int lane = 0; lane < 8; lane++)
                    {
                        Check(x + lane, v[lane], "Load256");
                    }
                }
            }

            if (Vector512.IsHardwareAccelerated)
            {
                for (int x = 0; x < 65536; x += 16)
                {
                    Vector512<float> v = KvWiden.Load512(type, (byte*)bits, null, x);
                    Vector512<float> fast = type == KvElementType.Float16 && Avx512F.IsSupported ? KvWiden.Half512Avx512(Vector256.Load((short*)bits + x)) : v;
                    Vector512<float> portable = type == KvElementType.Float16 ? KvWiden.Half512Portable(Vector256.Load(bits + x)) : v;
                    for (int lane = 0; lane < 16; lane++)
                    {
                        Check(x + lane, v[lane], "Load512");
                        Check(x + lane, fast[lane], "the AVX-512 Half512");
                        Check(x + lane, portable[lane], "the portable Half512");
                    }
                }
            }
        }
    }

    [Theory]
    [InlineData("key")]
    [InlineData("value")]
    public void Non_finite_float16_input_is_the_named_argument_error(string which)
    {
        var shape = new AttentionShape(1, 4, 1, 3000, 64, 64, 2);
        float[] q = Data.Normal(shape.QueryLength, 11);
        Half[] k = [.. Data.Normal(shape.KeyLength, 12).Select(x => (Half)x)];
        Half[] v = [.. Data.Normal(shape.ValueLength, 13).Select(x => (Half)x)];
        (which == "key" ? k : v)[(2000 * 64) + 5] = Half.NaN;
        var output = new float[shape.OutputLength];
        ArgumentException error = Assert.ThrowsAny<ArgumentException>(() =>
            ExactAttention.Compute(q, KvTensor.FromFloat16(k, 64), KvTensor.FromFloat16(v, 64), shape, output, new ExactAttentionOptions()));
        Assert.Equal(which, error.ParamName);
        Assert.Contains("non-finite f16", error.Message, StringComparison.Ordinal);
        Assert.StartsWith("splitkey-", KernelRegistry.Select(null, ArgsFor(shape, KvElementType.Float16)).Name, StringComparison.Ordinal);
    }

    [Fact]
    public void Non_finite_elements_in_keys_and_values_no_query_sees_are_still_reported()
    {
        // A window of 10 keys with 2 sinks sees nothing of keys 100 .. 3000: the chunks there are skipped, and scanned instead.
        long* first = stackalloc long[2];
        foreach ((AttentionKernel k, KvElementType type) in Kernels())
        {
            foreach (bool inKeys in new[] { true, false })
            {
                var shape = new AttentionShape(1, 4, 1, 4100, 32, 32, 1);
                float[] q = Data.Normal(shape.QueryLength, 14);
                float[] kf = Data.Normal(shape.KeyLength, 15), vf = Data.Normal(shape.ValueLength, 16);
                KvTensor key = KvTensor.Encode(kf, 32, type), value = KvTensor.Encode(vf, 32, type);
                Poison(inKeys ? key : value, (1500 * 32) + 3);
                first[0] = first[1] = long.MaxValue;
                float[] output = Run(k, q, key, value, shape, true, 10, 2, 0, threads: 2, first);
                Assert.True(inKeys ? first[0] != long.MaxValue : first[1] != long.MaxValue, $"{k.Name}: a non-finite {(inKeys ? "key" : "value")} element outside the window went unreported");
                Assert.True(output.All(float.IsFinite), $"{k.Name}: the masked element reached the output");
                if (type == KvElementType.Float32)
                {
                    Assert.Equal((1500 * 32) + 3, inKeys ? first[0] : first[1]);
                }
            }
        }
    }

    [Fact]
    public void Kernels_name_the_storage_type_they_read()
    {
        var shape = new AttentionShape(1, 2, 1, 64, 16, 16);
        KvTensor bf16 = KvTensor.Encode(Data.Normal(shape.KeyLength, 17), 16, KvElementType.BFloat16);
        using KvTensor.Pinned keys = bf16.Pin(shape.KeyCount);
        AttentionArgs a = AttentionArgs.FromShape(shape);
        a.KeyStore = keys.Operand;
        a.ValueStore = keys.Operand;
        foreach ((AttentionKernel k, KvElementType type) in Kernels())
        {
            string? reason = k.WhyNot(in a);
            if (type == KvElementType.BFloat16)
            {
                Assert.Null(reason);
            }
            else
            {
                Assert.Equal($"{k.Name}: keys are bf16; this kernel reads {KvElementTypes.Name(type)}", reason);
            }
        }

        // Every kernel takes windows.
        AttentionArgs windowed = AttentionArgs.FromShape(shape);
        windowed.Window = 8;
        Assert.All(Kernels().Where(x => x.Type == KvElementType.Float32), x => Assert.Null(x.Kernel.WhyNot(in windowed)));
        Assert.All(KernelRegistry.Attention.Where(x => x.Name.StartsWith("tiled", StringComparison.Ordinal) && x.IsSupported() && x.Name.Count(c => c == '-') == 1), x => Assert.Null(x.WhyNot(in windowed)));
    }

    /// <summary>Attention in float64 on the stored values, with the window, sinks and causal limit as an explicit boolean mask.</summary>
    private static double[] Expected(float[] q, KvTensor key, KvTensor value, AttentionShape shape, bool causal, int window, int sinks)
    {
        int nq = shape.QueryCount, nk = shape.KeyCount;
        var mask = new bool[nq * nk];
        for (int i = 0; i < nq; i++)
        {
            int p = i + nk - nq;
            for (int j = 0; j < nk; j++)
            {
                mask[(i * nk) + j] = (!causal || j <= p) && (window == 0 || j > p - window || j < sinks);
            }
        }

        return Reference.Attention(q, key.ToFloat32(), value.ToFloat32(), shape, new Reference.Options(Scale: Scale(shape), Mask: mask));
    }

    private static float Scale(AttentionShape shape) => 1f / MathF.Sqrt(shape.HeadDim);

    private static AttentionArgs ArgsFor(AttentionShape shape, KvElementType type)
    {
        AttentionArgs a = AttentionArgs.FromShape(shape);
        a.KeyStore = new KvOperand { Type = type, Data = (byte*)1, Rows = shape.KeyCount, RowLength = shape.HeadDim };
        a.ValueStore = new KvOperand { Type = type, Data = (byte*)1, Rows = shape.KeyCount, RowLength = shape.ValueDim };
        return a;
    }

    /// <summary>Runs <paramref name="kernel"/> on the stored keys and values, contiguous or copied into pages of <paramref name="pageRows"/> rows.</summary>
    private static float[] Run(AttentionKernel kernel, float[] query, KvTensor key, KvTensor value, AttentionShape shape, bool causal, int window, int sinks, int pageRows, int threads,
        long* firstNonFinite = null)
    {
        var output = new float[shape.OutputLength];
        using KvTensor.Pinned keys = key.Pin(shape.KeyCount);
        using KvTensor.Pinned values = value.Pin(shape.KeyCount);
        using var pagedKeys = pageRows > 0 ? new PagedOperand(keys.Operand, shape.BatchSize * shape.EffectiveKeyValueHeads, pageRows) : null;
        using var pagedValues = pageRows > 0 ? new PagedOperand(values.Operand, shape.BatchSize * shape.EffectiveKeyValueHeads, pageRows) : null;
        fixed (float* q = query)
        fixed (float* o = output)
        {
            AttentionArgs a = AttentionArgs.FromShape(shape);
            a.Query = q;
            a.KeyStore = pagedKeys?.Operand ?? keys.Operand;
            a.ValueStore = pagedValues?.Operand ?? values.Operand;
            a.Key = a.KeyStore.IsContiguousFloat32 ? (float*)a.KeyStore.Data : null;
            a.Value = a.ValueStore.IsContiguousFloat32 ? (float*)a.ValueStore.Data : null;
            a.Output = o;
            a.Scale = Scale(shape);
            a.Causal = causal;
            a.Window = window;
            a.Sinks = sinks;
            a.MaxDegreeOfParallelism = threads;
            a.FirstNonFinite = firstNonFinite;
            Assert.Null(kernel.WhyNot(in a));
            kernel.Run(a);
        }

        return output;
    }

    /// <summary>Overwrites element <paramref name="at"/> of a tensor's storage with a non-finite value (q8: its block's scale).</summary>
    private static void Poison(KvTensor tensor, int at)
    {
        using KvTensor.Pinned pinned = tensor.Pin();
        KvOperand o = pinned.Operand;
        switch (o.Type)
        {
            case KvElementType.Float32:
                ((float*)o.Data)[at] = float.NaN;
                break;
            case KvElementType.Float16:
                ((Half*)o.Data)[at] = Half.PositiveInfinity;
                break;
            case KvElementType.BFloat16:
                ((ushort*)o.Data)[at] = 0x7fc0;
                break;
            default:
                o.Scales[((at / o.RowLength) * o.BlocksPerRow) + (at % o.RowLength / KvOperand.Q8Block)] = Half.NaN;
                break;
        }
    }

    /// <summary>
    /// A copy of a contiguous operand in pages of <c>pageRows</c> rows, each its own pinned array (allocated last page first, so the
    /// pages do not follow each other in memory), the rows past the end of the last page filled with all-ones bytes (NaN in f32,
    /// f16 and bf16; a NaN q8 scale), so that a kernel reading past the keys gives NaN.
    /// </summary>
    internal sealed class PagedOperand : IDisposable
    {
        private readonly List<byte[]> _arrays = [];
        private readonly nint[] _pages;
        private readonly nint[] _scalePages;
        private GCHandle _pagesHandle;
        private GCHandle _scalePagesHandle;

        public PagedOperand(KvOperand source, int groups, int pageRows)
        {
            int perGroup = (source.Rows + pageRows - 1) / pageRows;
            long rowBytes = (long)source.RowLength * source.ElementSize;
            int scaleBytes = source.Type == KvElementType.Q8 ? source.BlocksPerRow * sizeof(ushort) : 0;
            _pages = new nint[groups * perGroup];
            _scalePages = new nint[groups * perGroup];
            for (int page = (groups * perGroup) - 1; page >= 0; page--)
            {
                int g = page / perGroup, first = page % perGroup * pageRows;
                _pages[page] = NewPage(pageRows * rowBytes);
                _scalePages[page] = scaleBytes > 0 ? NewPage((long)pageRows * scaleBytes) : 0;
                for (int j = first; j < Math.Min(first + pageRows, source.Rows); j++)
                {
                    Buffer.MemoryCopy(source.Row(g, j), (byte*)_pages[page] + ((j - first) * rowBytes), rowBytes, rowBytes);
                    if (scaleBytes > 0)
                    {
                        Buffer.MemoryCopy(source.RowScales(g, j), (byte*)_scalePages[page] + ((j - first) * scaleBytes), scaleBytes, scaleBytes);
                    }
                }
            }

            _pagesHandle = GCHandle.Alloc(_pages, GCHandleType.Pinned);
            _scalePagesHandle = GCHandle.Alloc(_scalePages, GCHandleType.Pinned);
            Operand = new KvOperand
            {
                Type = source.Type,
                Pages = (byte**)_pagesHandle.AddrOfPinnedObject(),
                ScalePages = scaleBytes > 0 ? (Half**)_scalePagesHandle.AddrOfPinnedObject() : null,
                PageRows = pageRows,
                PagesPerGroup = perGroup,
                Rows = source.Rows,
                RowLength = source.RowLength,
            };
        }

        public KvOperand Operand { get; }

        public void Dispose()
        {
            _pagesHandle.Free();
            _scalePagesHandle.Free();
        }

        private nint NewPage(long bytes)
        {
            byte[] page = GC.AllocateArray<byte>((int)bytes, pinned: true);
            page.AsSpan().Fill(0xff);
            _arrays.Add(page);
            return (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(page));
        }
    }
}
