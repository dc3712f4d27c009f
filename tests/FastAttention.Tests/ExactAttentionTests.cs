using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class ExactAttentionTests
{
    /// <summary>Kernels that take the tests' multi-query shapes (more than 16 queries per head).</summary>
    public static TheoryData<string> KernelNames() => KernelsFor.Names(queryCount: 17);

    /// <summary>The awkward-size grid (1, primes, tile and vector widths plus or minus one): every n against a few d, every d against a few n, causal on and off
    /// (all but n = 1023, which <see cref="LargeGrid"/> holds).</summary>
    public static TheoryData<string, int, int, int, bool> Grid() => GridCases(large: false);

    /// <summary>The grid's n = 1023 cases (seconds each against the float64 reference): in the Slow category.</summary>
    public static TheoryData<string, int, int, int, bool> LargeGrid() => GridCases(large: true);

    private static TheoryData<string, int, int, int, bool> GridCases(bool large)
    {
        var data = new TheoryData<string, int, int, int, bool>();
        int[] ns = [1, 2, 7, 31, 33, 113, 257, 1023];
        int[] ds = [1, 8, 15, 20, 32, 48, 59, 64, 100, 128]; // value widths of 1-8 vectors: every micro-kernel mix
        foreach (bool causal in new[] { false, true })
        {
            var shapes = new List<(int Nq, int Nk, int D)>();
            shapes.AddRange(ns.Select(n => (n, n, n == 1023 ? 64 : 15)));
            shapes.AddRange(ds.Where(d => d != 15).Select(d => (113, 113, d)));

            // nq != nk in both directions (decoding-like and prefix-like).
            shapes.AddRange([(1, 257, 64), (33, 300, 8), (300, 33, 8), (16, 1000, 128), (3, 5000, 32)]);
            foreach ((int nq, int nk, int d) in shapes.Where(x => (x.Nq == 1023) == large))
            {
                foreach (AttentionKernel kernel in KernelsFor.Shape(nq, nk))
                {
                    data.Add(kernel.Name, nq, nk, d, causal);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Matches_float64_reference_over_awkward_sizes(string kernel, int nq, int nk, int d, bool causal) =>
        MatchesReference(kernel, nq, nk, d, causal);

    [Theory]
    [Trait("Category", "Slow")]
    [MemberData(nameof(LargeGrid))]
    public void Matches_float64_reference_at_n_1023(string kernel, int nq, int nk, int d, bool causal) =>
        MatchesReference(kernel, nq, nk, d, causal);

    private static void MatchesReference(string kernel, int nq, int nk, int d, bool causal)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, d);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, seed: (nq * 31) + (nk * 7) + d);
        var output = new float[shape.OutputLength];
        AttentionRun run = ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Causal = causal, Kernel = kernel });
        Assert.Equal(kernel, run.Kernel);

        double[] expected = Reference.Attention(q, k, v, shape, new Reference.Options(Causal: causal));
        Tolerance.AssertExact(output, expected, $"{kernel} nq={nq} nk={nk} d={d} causal={causal}");

        float[] naive = Reference.NaiveFloat(q, k, v, shape, causal);
        double naiveError = Tolerance.MaxAbsError(naive, expected);
        double error = Tolerance.MaxAbsError(output, expected);
        Assert.True(error <= (Tolerance.NaiveFactor * naiveError) + Tolerance.NaiveFloor,
            $"fast error {error:E3} exceeds {Tolerance.NaiveFactor} x naive fp32 error {naiveError:E3}");
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Value_dim_can_differ_from_head_dim(string kernel)
    {
        var shape = new AttentionShape(2, 3, 37, 70, 9, 67);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 5);
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Scale = 0.3f });
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.3f)), kernel);
    }

    /// <summary>Causal shapes whose diagonal crosses several query tiles (120 rows) and key tiles (512 keys) at every
    /// offset, with value widths that use each P V tile (4-wide, pair, single): the kernels skip the all-masked micro-tiles.</summary>
    [Theory]
    [Trait("Category", "Slow")]
    [InlineData(1500, 2100, 64, 64)]
    [InlineData(1300, 700, 32, 32)]
    [InlineData(1100, 1100, 24, 20)]
    [InlineData(130, 1200, 16, 48)]
    public void Causal_diagonals_across_many_tiles_match_float64(int nq, int nk, int d, int dv)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, dv);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 21);
        double[] expected = Reference.Attention(q, k, v, shape, new Reference.Options(Causal: true));
        foreach (AttentionKernel kernel in KernelsFor.Shape(nq, nk))
        {
            var output = new float[shape.OutputLength];
            ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel.Name, Causal = true });
            Tolerance.AssertExact(output, expected, $"{kernel.Name} nq={nq} nk={nk} d={d} dv={dv}");
        }
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Grouped_query_heads_share_key_value_heads(string kernel)
    {
        var shape = new AttentionShape(2, 8, 45, 45, 16, 16, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 9);
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Causal = true });
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: true)), kernel);
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Bias_and_mask_broadcast_like_the_reference(string kernel)
    {
        var shape = new AttentionShape(2, 3, 19, 300, 8, 8);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 11);
        float[] bias = Data.Normal((long)shape.HeadCount * 19 * 300, 12); // [heads, nq, nk]
        var random = new Random(13);
        bool[] mask = new bool[2L * 3 * 19 * 300]; // [batch, heads, nq, nk]
        for (int i = 0; i < mask.Length; i++)
        {
            mask[i] = random.NextDouble() < 0.7;
        }

        // One fully masked row: it must output zeros.
        Array.Fill(mask, false, 300 * 4, 300);

        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Bias = bias, Mask = mask });
        double[] expected = Reference.Attention(q, k, v, shape, new Reference.Options(Bias: bias, Mask: mask));
        Tolerance.AssertExact(output, expected, kernel);
        Assert.All(output.AsSpan(4 * 8, 8).ToArray(), x => Assert.Equal(0f, x));
    }

    [Theory]
    [InlineData("splitkey-v512")]
    [InlineData("splitkey-v256")]
    public void A_forced_kernel_that_cannot_take_the_input_says_why(string kernel)
    {
        var shape = AttentionShape.SingleHead(17, 4);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 1);
        var ex = Assert.Throws<NotSupportedException>(() => ExactAttention.Compute(q, k, v, shape, new float[shape.OutputLength], new ExactAttentionOptions { Kernel = kernel }));
        Assert.Contains(kernel, ex.Message);
        Assert.True(ex.Message.Contains("at most 16", StringComparison.Ordinal) || ex.Message.Contains("CPU", StringComparison.Ordinal), ex.Message);
    }

    public static TheoryData<string> DecodeKernels() => KernelsFor.Names(queryCount: 1);

    [Theory]
    [MemberData(nameof(DecodeKernels))]
    public void Decoding_shapes_with_gqa_mask_and_bias_match_the_reference(string kernel)
    {
        var shape = new AttentionShape(2, 8, 3, 700, 40, 24, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 17);
        float[] bias = Data.Normal(3L * 700, 18);
        var random = new Random(19);
        bool[] mask = [.. Enumerable.Range(0, 2 * 8 * 3 * 700).Select(_ => random.NextDouble() < 0.9)];
        Array.Fill(mask, false, 700, 700); // batch 0, head 0, query 1: nothing visible
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Causal = true, Bias = bias, Mask = mask });
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: true, Bias: bias, Mask: mask)), kernel);
        Assert.All(output.AsSpan(24, 24).ToArray(), x => Assert.Equal(0f, x));

        var one = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, one, new ExactAttentionOptions { Kernel = kernel, Causal = true, Bias = bias, Mask = mask, MaxDegreeOfParallelism = 1 });
        Assert.Equal(output, one);
    }

    /// <summary>
    /// The tiled kernels pack and run kv heads in passes that fit a budget of packed floats; a budget of one float forces a
    /// pass per kv head. Grouped heads (2 query heads per kv head), two batch entries, value widths copied (20) and read in
    /// place (32): the same bits as one pass, and the float64 result.
    /// </summary>
    [Theory]
    [MemberData(nameof(KernelNames))]
    public unsafe void Tiled_kernels_running_kv_heads_in_passes_give_the_same_bits(string kernel)
    {
        AttentionKernel run = KernelRegistry.Attention.Single(k => k.Name == kernel); // the tiled ones: they take 17+ queries
        foreach ((int dv, bool causal) in new[] { (20, false), (32, true) })
        {
            var shape = new AttentionShape(2, 6, 40, 300, 20, dv, KeyValueHeadCount: 3);
            (float[] q, float[] k, float[] v) = Data.Inputs(shape, 31 + dv);
            float[] batched = new float[shape.OutputLength], whole = new float[shape.OutputLength];
            fixed (float* qp = q, kp = k, vp = v, bp = batched, wp = whole)
            {
                AttentionArgs args = AttentionArgs.FromShape(shape);
                args.Query = qp;
                args.Key = kp;
                args.Value = vp;
                args.Scale = 1f / MathF.Sqrt(20);
                args.Causal = causal;
                args.Output = wp;
                run.Run(args);
                args.Output = bp;
                args.PackBudgetFloats = 1;
                run.Run(args);
            }

            Assert.Equal(whole, batched);
            Tolerance.AssertExact(batched, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: causal)), $"{kernel} dv={dv}");
        }
    }

    /// <summary>Grouped-query decoding with several rows per kv head runs in chunks of 256 keys at d = dv = 128 (12 chunks here,
    /// the last partial): every head of a group against the same chunk, merged per head.</summary>
    [Theory]
    [Trait("Category", "Slow")]
    [MemberData(nameof(DecodeKernels))]
    public void Grouped_query_decoding_over_many_shared_chunks_matches_the_reference(string kernel)
    {
        foreach (bool causal in new[] { false, true })
        {
            var shape = new AttentionShape(2, 8, 2, 3000, 128, 128, KeyValueHeadCount: 2);
            (float[] q, float[] k, float[] v) = Data.Inputs(shape, 29);
            var output = new float[shape.OutputLength];
            ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Causal = causal });
            Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: causal)), $"{kernel} causal={causal}");

            var one = new float[shape.OutputLength];
            ExactAttention.Compute(q, k, v, shape, one, new ExactAttentionOptions { Kernel = kernel, Causal = causal, MaxDegreeOfParallelism = 1 });
            Assert.Equal(output, one);
        }
    }

    /// <summary>dv = 245 is, with 512-bit vectors, one block each of 8, 4, 2 and 1 vectors and 5 scalars (with 256-bit vectors:
    /// three 8-vector blocks, one of 4, one of 2, 5 scalars): every register block of the decoding kernel's weighted sum.</summary>
    [Theory]
    [MemberData(nameof(DecodeKernels))]
    public void Decoding_value_widths_use_every_register_block(string kernel)
    {
        foreach (bool causal in new[] { false, true })
        {
            var shape = new AttentionShape(1, 2, 5, 1500, 37, 245);
            (float[] q, float[] k, float[] v) = Data.Inputs(shape, 23);
            var output = new float[shape.OutputLength];
            ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Causal = causal });
            Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: causal)), $"{kernel} causal={causal}");
        }
    }

    [Fact]
    public void Causal_with_more_queries_than_keys_gives_zero_rows_for_queries_that_see_nothing()
    {
        var shape = new AttentionShape(1, 1, 10, 4, 3, 3);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 3);
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Causal = true });

        // Bottom-right aligned: query i sees keys j <= i - 6, so queries 0..5 see nothing.
        Assert.All(output.AsSpan(0, 6 * 3).ToArray(), x => Assert.Equal(0f, x));
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Causal: true)), "causal nq > nk");
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Output_bits_do_not_depend_on_thread_count(string kernel)
    {
        var shape = new AttentionShape(2, 3, 200, 333, 24, 24);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 21);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        var all = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, one, new ExactAttentionOptions { Kernel = kernel, MaxDegreeOfParallelism = 1, Causal = true });
        ExactAttention.Compute(q, k, v, shape, two, new ExactAttentionOptions { Kernel = kernel, MaxDegreeOfParallelism = 2, Causal = true });
        ExactAttention.Compute(q, k, v, shape, all, new ExactAttentionOptions { Kernel = kernel, MaxDegreeOfParallelism = 7, Causal = true });
        Assert.Equal(one, two);
        Assert.Equal(one, all);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(1, 5)]
    [InlineData(6, 1)]
    public void Tiny_shapes_work(int n, int d)
    {
        var shape = AttentionShape.SingleHead(n, d);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, n + d);
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output);
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape), $"n={n} d={d}");
        if (n == 1)
        {
            Assert.Equal(v, output); // one key: weight 1
        }
    }

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void Scores_of_1e4_give_a_finite_correct_softmax(string kernel)
    {
        // Integer-valued inputs make every score exact in float32, so the reference is comparable
        // bit for bit in the scores; scores reach +-1.0e4 within a row.
        var shape = AttentionShape.SingleHead(40, 4);
        var random = new Random(77);
        float[] q = new float[shape.QueryLength];
        float[] k = new float[shape.KeyLength];
        for (int i = 0; i < q.Length; i++)
        {
            q[i] = random.Next(-50, 51);
            k[i] = random.Next(-50, 51);
        }

        float[] v = Data.Normal(shape.ValueLength, 78);
        var output = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Kernel = kernel, Scale = 1f });
        Assert.All(output, x => Assert.True(float.IsFinite(x)));
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 1.0)), kernel);
    }

    [Fact]
    public void Tensor_span_overload_matches_span_overload_and_handles_strided_views()
    {
        var shape = new AttentionShape(1, 2, 17, 23, 8, 8);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 31);
        var expected = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, expected);

        var actual = new float[shape.OutputLength];
        ExactAttention.Compute(
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(q, [2, 17, 8]),
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(k, [2, 23, 8]),
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(v, [2, 23, 8]),
            new System.Numerics.Tensors.TensorSpan<float>(actual, [2, 17, 8]));
        Assert.Equal(expected, actual);

        // A transposed (non-C-order) view of K: the data of K^T viewed with swapped strides reads as K.
        float[] kT = new float[k.Length];
        for (int h = 0; h < 2; h++)
        {
            for (int j = 0; j < 23; j++)
            {
                for (int t = 0; t < 8; t++)
                {
                    kT[(h * 23 * 8) + (t * 23) + j] = k[(h * 23 * 8) + (j * 8) + t];
                }
            }
        }

        var strided = new float[shape.OutputLength];
        ExactAttention.Compute(
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(q, [2, 17, 8]),
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(kT, [2, 23, 8], [23 * 8, 1, 23]),
            new System.Numerics.Tensors.ReadOnlyTensorSpan<float>(v, [2, 23, 8]),
            new System.Numerics.Tensors.TensorSpan<float>(strided, [2, 17, 8]));
        Assert.Equal(expected, strided);
    }
}
