using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The tiled (prefill) kernels on keys and values in every storage type, contiguous and paged, with masks and sliding windows:
/// each against the float64 reference on the values as stored (decoded), and, since packing widens exactly, bit for bit against
/// the float32 kernel of the same width on those decoded values.
/// </summary>
public sealed unsafe class KvPrefillTests
{
    /// <summary>(batch, heads, kv heads, nq, nk, d, dv): every awkward nq, nk and d at least once, dv != d, grouped heads.</summary>
    private static readonly (int B, int H, int Kv, int Nq, int Nk, int D, int Dv)[] Grid =
    [
        (1, 1, 1, 1, 1, 1, 1),
        (1, 1, 1, 2, 7, 8, 3),
        (2, 4, 2, 7, 2, 15, 16),
        (1, 2, 1, 31, 33, 59, 64),
        (1, 1, 1, 33, 31, 64, 100),
        (1, 2, 2, 113, 257, 100, 59),
        (1, 1, 1, 257, 113, 128, 128),
        (1, 1, 1, 1023, 257, 64, 8),
        (1, 3, 1, 2, 1023, 128, 15),
    ];

    /// <summary>Every tiled kernel this CPU runs, of every storage type.</summary>
    public static TheoryData<string> TiledKernels()
    {
        var data = new TheoryData<string>();
        foreach (AttentionKernel kernel in KernelRegistry.Attention.Where(k => k.Name.StartsWith("tiled-", StringComparison.Ordinal) && k.IsSupported()))
        {
            data.Add(kernel.Name);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void Tiled_kernels_match_the_float64_reference_on_the_stored_values(string kernel)
    {
        KvElementType type = TypeOf(kernel);
        foreach ((int b, int heads, int kv, int nq, int nk, int d, int dv) in Grid)
        {
            var shape = new AttentionShape(b, heads, nq, nk, d, dv, KeyValueHeadCount: kv);
            foreach (bool causal in new[] { false, true })
            {
                var input = new Input(shape, type, seed: nq + nk + d);
                var masks = new Masks(causal);
                float[] two = input.Run(kernel, masks, threads: 2);
                string what = $"{kernel} nq={nq} nk={nk} d={d} dv={dv} causal={causal}";
                Tolerance.AssertExact(two, input.Expected(masks), what);
                Assert.Equal(two, input.Run(kernel, masks, threads: 1));
                if (type != KvElementType.Float32)
                {
                    Assert.Equal(two, input.RunFloat32(Float32Twin(kernel), masks));
                }
            }
        }
    }

    /// <summary>Keys and values in pages of 16 and 64 rows (the last page part full, its unused rows NaN): the bits of the contiguous run.
    /// dv = 32 is read in place when contiguous f32 and widened when paged; dv = 20 is copied either way.</summary>
    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void Paged_keys_and_values_give_the_bits_of_contiguous_ones(string kernel)
    {
        KvElementType type = TypeOf(kernel);
        foreach ((int dv, bool causal) in new[] { (32, false), (20, true), (32, true) })
        {
            var shape = new AttentionShape(2, 4, 40, 300, 59, dv, KeyValueHeadCount: 2);
            var input = new Input(shape, type, seed: dv);
            var masks = new Masks(causal);
            float[] contiguous = input.Run(kernel, masks, threads: 2);
            Tolerance.AssertExact(contiguous, input.Expected(masks), $"{kernel} dv={dv} causal={causal}");
            foreach (int pageRows in new[] { 16, 64 })
            {
                Assert.Equal(contiguous, input.Run(kernel, masks, threads: 2, pageRows: pageRows));
                Assert.Equal(contiguous, input.Run(kernel, masks, threads: 1, pageRows: pageRows));
            }
        }
    }

    /// <summary>An additive bias and a boolean mask (some rows fully masked: they output zeros), with and without causal.</summary>
    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void Bias_and_mask_match_the_reference(string kernel)
    {
        var shape = new AttentionShape(1, 2, 33, 257, 64, 48);
        var input = new Input(shape, TypeOf(kernel), seed: 5);
        float[] bias = Data.Normal((long)shape.QueryCount * shape.KeyCount, 7, 0.5f);
        var random = new Random(9);
        bool[] mask = [.. Enumerable.Range(0, shape.QueryCount * shape.KeyCount).Select(at => at / shape.KeyCount % 11 != 3 && random.Next(4) != 0)];
        foreach (bool causal in new[] { false, true })
        {
            var masks = new Masks(causal, Bias: bias, Mask: mask);
            float[] output = input.Run(kernel, masks, threads: 2);
            Tolerance.AssertExact(output, input.Expected(masks), $"{kernel} causal={causal}");
            Assert.Equal(output, input.Run(kernel, masks, threads: 1));
        }
    }

    /// <summary>
    /// Sliding windows with and without sinks, causal or not, nq below, equal to and above nk, windows of one key, of less than a
    /// tile and of more than all keys, sinks past the window's start: the reference with the window written as an explicit mask.
    /// </summary>
    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void Windows_and_sinks_match_the_reference_with_an_explicit_mask(string kernel)
    {
        (int Nq, int Nk, int Window, int Sinks, bool Causal, int PageRows)[] cases =
        [
            (257, 257, 16, 0, true, 0),
            (257, 257, 64, 4, true, 16),
            (113, 1023, 100, 3, true, 0),
            (600, 600, 130, 0, false, 64),
            (31, 33, 5, 2, false, 0),
            (33, 31, 7, 40, true, 0),
            (7, 1023, 1, 1, true, 16),
            (300, 300, 1000, 5, true, 0),
            (250, 1023, 300, 200, true, 0),
            (1023, 1023, 256, 0, true, 0),
        ];
        KvElementType type = TypeOf(kernel);
        foreach ((int nq, int nk, int window, int sinks, bool causal, int pageRows) in cases)
        {
            var shape = new AttentionShape(1, 2, nq, nk, 64, 40, KeyValueHeadCount: 1);
            var input = new Input(shape, type, seed: window + sinks);
            var masks = new Masks(causal, window, sinks);
            float[] output = input.Run(kernel, masks, threads: 2, pageRows: pageRows);
            Tolerance.AssertExact(output, input.Expected(masks), $"{kernel} nq={nq} nk={nk} window={window} sinks={sinks} causal={causal}");
            Assert.Equal(output, input.Run(kernel, masks, threads: 1, pageRows: pageRows));
        }
    }

    /// <summary>A window combined with a bias and a mask.</summary>
    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void A_window_with_bias_and_mask_matches_the_reference(string kernel)
    {
        var shape = new AttentionShape(1, 1, 130, 700, 32, 32);
        var input = new Input(shape, TypeOf(kernel), seed: 13);
        float[] bias = Data.Normal((long)shape.QueryCount * shape.KeyCount, 17, 0.5f);
        var random = new Random(19);
        bool[] mask = [.. Enumerable.Range(0, shape.QueryCount * shape.KeyCount).Select(_ => random.Next(5) != 0)];
        var masks = new Masks(true, 90, 6, bias, mask);
        Tolerance.AssertExact(input.Run(kernel, masks, threads: 2), input.Expected(masks), kernel);
    }

    /// <summary>A pack budget of one float runs a pass per kv head (two batch entries, three kv heads, grouped queries), paged or not:
    /// the bits of one pass.</summary>
    [Theory]
    [MemberData(nameof(TiledKernels))]
    public void Several_pack_passes_give_the_bits_of_one(string kernel)
    {
        foreach ((int dv, bool causal, int pageRows, int window) in new[] { (20, false, 0, 0), (32, true, 16, 0), (32, true, 0, 50) })
        {
            var shape = new AttentionShape(2, 6, 40, 300, 20, dv, KeyValueHeadCount: 3);
            var input = new Input(shape, TypeOf(kernel), seed: 31 + dv);
            var masks = new Masks(causal, window, window > 0 ? 2 : 0);
            float[] whole = input.Run(kernel, masks, threads: 2, pageRows: pageRows);
            Assert.Equal(whole, input.Run(kernel, masks, threads: 2, pageRows: pageRows, packBudget: 1));
            Tolerance.AssertExact(whole, input.Expected(masks), $"{kernel} dv={dv} causal={causal}");
        }
    }

    /// <summary>Typed prefill through the public entry picks the tiled kernel of the type; a kernel of another type says why it cannot run.</summary>
    [Fact]
    public void Typed_prefill_selects_the_tiled_kernel_of_its_type()
    {
        var shape = new AttentionShape(1, 2, 40, 100, 16, 16);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 3);
        var output = new float[shape.OutputLength];
        string first = KernelRegistry.Attention.First(kernel => kernel.Name.StartsWith("tiled-", StringComparison.Ordinal) && kernel.IsSupported()).Name;
        foreach (KvElementType type in Enum.GetValues<KvElementType>())
        {
            AttentionRun run = ExactAttention.Compute(q, KvTensor.Encode(k, 16, type), KvTensor.Encode(v, 16, type), shape, output);
            Assert.Equal(type == KvElementType.Float32 ? first : $"{first}-{KvElementTypes.Name(type)}", run.Kernel);
        }

        var ex = Assert.Throws<NotSupportedException>(() => ExactAttention.Compute(
            q, KvTensor.Encode(k, 16, KvElementType.BFloat16), KvTensor.Encode(v, 16, KvElementType.BFloat16), shape, output, new ExactAttentionOptions { Kernel = first }));
        Assert.Contains("bf16", ex.Message);
        Assert.Contains("reads f32", ex.Message);
    }

    private static KvElementType TypeOf(string kernel) =>
        KvElementTypes.TryParse(kernel[(kernel.LastIndexOf('-') + 1)..], out KvElementType type) ? type : KvElementType.Float32;

    private static string Float32Twin(string kernel) => kernel[..kernel.LastIndexOf('-')];

    /// <summary>What masks a run: causal, a window with sinks, a bias and a mask (both [nq, nk], broadcast over batch and heads).</summary>
    private sealed record Masks(bool Causal, int Window = 0, int Sinks = 0, float[]? Bias = null, bool[]? Mask = null);

    /// <summary>Random queries, and keys and values encoded in a type with their decoded floats.</summary>
    private sealed class Input
    {
        private readonly AttentionShape _shape;
        private readonly float[] _query;
        private readonly KvTensor _key;
        private readonly KvTensor _value;
        private readonly float[] _keyFloats;
        private readonly float[] _valueFloats;

        public Input(AttentionShape shape, KvElementType type, int seed)
        {
            _shape = shape;
            (_query, float[] k, float[] v) = Data.Inputs(shape, seed);
            _key = KvTensor.Encode(k, shape.HeadDim, type);
            _value = KvTensor.Encode(v, shape.ValueDim, type);
            _keyFloats = _key.ToFloat32();
            _valueFloats = _value.ToFloat32();
        }

        /// <summary>The float64 reference on the decoded keys and values, the window written into an explicit mask.</summary>
        public double[] Expected(Masks masks)
        {
            bool[]? mask = masks.Mask;
            if (masks.Window > 0)
            {
                int nq = _shape.QueryCount, nk = _shape.KeyCount;
                mask = new bool[nq * nk];
                for (int i = 0; i < nq; i++)
                {
                    long p = i + (long)nk - nq;
                    for (int j = 0; j < nk; j++)
                    {
                        bool inWindow = j > p - masks.Window || j < masks.Sinks;
                        mask[(i * nk) + j] = inWindow && (!masks.Causal || j <= p) && (masks.Mask?[(i * nk) + j] ?? true);
                    }
                }
            }

            return Reference.Attention(_query, _keyFloats, _valueFloats, _shape, new Reference.Options(Causal: masks.Causal, Bias: masks.Bias, Mask: mask));
        }

        /// <summary>The kernel on the stored keys and values, contiguous or (pageRows &gt; 0) copied into pages.</summary>
        public float[] Run(string kernel, Masks masks, int threads, int pageRows = 0, long packBudget = 0)
        {
            int groups = _shape.BatchSize * _shape.EffectiveKeyValueHeads;
            using KvTensor.Pinned keys = _key.Pin(_shape.KeyCount);
            using KvTensor.Pinned values = _value.Pin(_shape.KeyCount);
            if (pageRows == 0)
            {
                return Launch(kernel, masks, threads, packBudget, keys.Operand, values.Operand);
            }

            var keyPages = new PagedCopy(keys.Operand, groups, pageRows);
            var valuePages = new PagedCopy(values.Operand, groups, pageRows);
            float[] output = Launch(kernel, masks, threads, packBudget, keyPages.Operand, valuePages.Operand);
            GC.KeepAlive(keyPages);
            GC.KeepAlive(valuePages);
            return output;
        }

        /// <summary>A float32 kernel on the decoded keys and values.</summary>
        public float[] RunFloat32(string kernel, Masks masks)
        {
            fixed (float* k = _keyFloats, v = _valueFloats)
            {
                return Launch(kernel, masks, 2, 0, KvOperand.Float32(k, _shape.KeyCount, _shape.HeadDim), KvOperand.Float32(v, _shape.KeyCount, _shape.ValueDim));
            }
        }

        private float[] Launch(string kernel, Masks masks, int threads, long packBudget, KvOperand keys, KvOperand values)
        {
            var output = new float[_shape.OutputLength];
            fixed (float* q = _query, o = output, bias = masks.Bias)
            fixed (bool* mask = masks.Mask)
            {
                AttentionArgs args = AttentionArgs.FromShape(_shape);
                args.Query = q;
                args.KeyStore = keys;
                args.ValueStore = values;
                args.Key = keys.IsContiguousFloat32 ? (float*)keys.Data : null;
                args.Value = values.IsContiguousFloat32 ? (float*)values.Data : null;
                args.Output = o;
                args.Bias = bias;
                args.Mask = mask;
                args.Scale = 1f / MathF.Sqrt(_shape.HeadDim);
                args.Causal = masks.Causal;
                args.Window = masks.Window;
                args.Sinks = masks.Sinks;
                args.MaxDegreeOfParallelism = threads;
                args.PackBudgetFloats = packBudget;
                AttentionKernel run = KernelRegistry.Attention.Single(k => k.Name == kernel);
                Assert.Null(run.WhyNot(in args));
                run.Run(args);
            }

            return output;
        }
    }

    /// <summary>
    /// A copy of a contiguous operand in pages of <c>pageRows</c> rows, each its own pinned array (a decoding cache's layout), the
    /// rows a page does not use filled with 0xFF bytes (NaN in f32, f16 and bf16), so a read past the last key shows in the output.
    /// </summary>
    private sealed class PagedCopy
    {
        private readonly List<Array> _alive = [];

        public PagedCopy(KvOperand source, int groups, int pageRows)
        {
            int perGroup = (source.Rows + pageRows - 1) / pageRows;
            int rowBytes = source.RowLength * source.ElementSize;
            int scaleBytes = source.BlocksPerRow * sizeof(Half);
            bool q8 = source.Type == KvElementType.Q8;
            nint* pages = Pinned<nint>(groups * perGroup);
            nint* scalePages = q8 ? Pinned<nint>(groups * perGroup) : null;
            for (int g = 0; g < groups; g++)
            {
                for (int p = 0; p < perGroup; p++)
                {
                    byte* page = Pinned<byte>(pageRows * rowBytes);
                    byte* scales = q8 ? Pinned<byte>(pageRows * scaleBytes) : null;
                    new Span<byte>(page, pageRows * rowBytes).Fill(0xFF);
                    for (int r = 0; r < pageRows && (p * pageRows) + r < source.Rows; r++)
                    {
                        int j = (p * pageRows) + r;
                        new ReadOnlySpan<byte>(source.Row(g, j), rowBytes).CopyTo(new Span<byte>(page + (r * rowBytes), rowBytes));
                        if (q8)
                        {
                            new ReadOnlySpan<byte>(source.RowScales(g, j), scaleBytes).CopyTo(new Span<byte>(scales + (r * scaleBytes), scaleBytes));
                        }
                    }

                    pages[(g * perGroup) + p] = (nint)page;
                    if (q8)
                    {
                        scalePages[(g * perGroup) + p] = (nint)scales;
                    }
                }
            }

            Operand = new KvOperand
            {
                Type = source.Type,
                Pages = (byte**)pages,
                ScalePages = (Half**)scalePages,
                PageRows = pageRows,
                PagesPerGroup = perGroup,
                Rows = source.Rows,
                RowLength = source.RowLength,
            };
        }

        public KvOperand Operand { get; }

        private T* Pinned<T>(int count)
            where T : unmanaged
        {
            T[] array = GC.AllocateArray<T>(Math.Max(count, 1), pinned: true);
            _alive.Add(array);
            return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        }
    }
}
