using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The exact and power backward (docs/algorithms.md §6) against the float64 reference backward, which is itself checked against
/// central finite differences of a float64 forward written here; every registry kernel forced in turn.
/// </summary>
public class ExactBackwardTests
{
    /// <summary>The backward kernels this CPU runs: each test forces each.</summary>
    public static TheoryData<string> Kernels()
    {
        var data = new TheoryData<string>();
        foreach (BackwardKernel kernel in KernelRegistry.Backward.Where(k => k.IsSupported()))
        {
            data.Add(kernel.Name);
        }

        return data;
    }

    internal sealed record Case(AttentionShape Shape, bool Causal = false, float? Scale = null, float Power = 0, float[]? Bias = null, bool[]? Mask = null, string? Kernel = null, int Threads = 0);

    internal sealed record Result(float[] Dq, float[] Dk, float[] Dv, float[] Output, float[] Lse, float[]? DBias);

    private static (float[] Q, float[] K, float[] V, float[] DO) Inputs(AttentionShape s, int seed) =>
        (Data.Normal(s.QueryLength, seed), Data.Normal(s.KeyLength, seed + 1), Data.Normal(s.ValueLength, seed + 2), Data.Normal(s.OutputLength, seed + 3));

    /// <summary>Forward with log-sum-exp, then backward, as a training step calls them.</summary>
    internal static Result Run(Case c, float[] q, float[] k, float[] v, float[] dO, int biasGradientLength = -1)
    {
        AttentionShape s = c.Shape;
        float[] o = new float[s.OutputLength], lse = new float[s.BatchSize * s.HeadCount * s.QueryCount];
        float[] dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        float[]? dBias = null;
        if (c.Power > 0)
        {
            var options = new PowerAttentionOptions { Power = c.Power, Scale = c.Scale, Causal = c.Causal, Mask = c.Mask, Kernel = c.Kernel, MaxDegreeOfParallelism = c.Threads };
            PowerAttention.Compute(q, k, v, s, o, lse, options);
            PowerAttention.Backward(q, k, v, o, dO, lse, s, dq, dk, dv, options);
        }
        else
        {
            var options = new ExactAttentionOptions { Scale = c.Scale, Causal = c.Causal, Bias = c.Bias, Mask = c.Mask, Kernel = c.Kernel, MaxDegreeOfParallelism = c.Threads };
            ExactAttention.Compute(q, k, v, s, o, lse, options);
            if (biasGradientLength >= 0)
            {
                dBias = new float[biasGradientLength];
                ExactAttention.Backward(q, k, v, o, dO, lse, s, dq, dk, dv, dBias, options);
            }
            else
            {
                ExactAttention.Backward(q, k, v, o, dO, lse, s, dq, dk, dv, options);
            }
        }

        return new Result(dq, dk, dv, o, lse, dBias);
    }

    internal static (double[] Dq, double[] Dk, double[] Dv, double[] DBias) ReferenceGradients(Case c, float[] q, float[] k, float[] v, float[] dO, int biasGradientLength = 0)
    {
        AttentionShape s = c.Shape;
        double[] dq = new double[q.Length], dk = new double[k.Length], dv = new double[v.Length], dBias = new double[biasGradientLength];
        double scale = c.Scale ?? (c.Power > 0 ? 1 : 1 / Math.Sqrt(s.HeadDim));
        ReferenceAttention.Backward(q, k, v, dO, s, dq, dk, dv, new ReferenceAttention.BackwardSettings(scale, c.Causal, c.Power, c.Bias, c.Mask), dBias);
        return (dq, dk, dv, dBias);
    }

    private static readonly int[] GridN = [1, 2, 7, 31, 33, 113, 257];
    private static readonly int[] GridD = [1, 8, 15, 64, 100];

    [Theory]
    [MemberData(nameof(Kernels))]
    [Trait("Category", "Slow")]
    public void Every_kernel_matches_the_float64_reference_on_the_awkward_grid(string kernel)
    {
        int seed = 10;
        foreach (int n in GridN)
        {
            foreach (int d in GridD)
            {
                if ((long)n * n * d > 257L * 257 * 64)
                {
                    continue;
                }

                foreach (bool causal in new[] { false, true })
                {
                    // nq != nk too: fewer queries than keys (decoding-like, bottom-right causal) and more.
                    foreach ((int nq, int nk) in new[] { (n, n), (Math.Max(1, n / 2), n), (n, Math.Max(1, (n / 3) + 1)) })
                    {
                        var shape = new AttentionShape(1, 2, nq, nk, d, d == 15 ? 7 : d);
                        Check(new Case(shape, causal, Kernel: kernel), seed++);
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Grouped_query_heads_batches_and_scale_match_the_reference(string kernel)
    {
        Check(new Case(new AttentionShape(2, 6, 37, 45, 24, 20, KeyValueHeadCount: 2), Kernel: kernel, Scale: 0.3f), 1);
        Check(new Case(new AttentionShape(2, 4, 50, 29, 16, 16, KeyValueHeadCount: 1), Causal: true, Kernel: kernel), 2);
        Check(new Case(new AttentionShape(1, 1, 300, 400, 64, 64), Causal: true, Kernel: kernel), 3);
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Power_backward_matches_the_reference(string kernel)
    {
        foreach (float p in new[] { 2f, 1f, 0.5f, 3f })
        {
            Check(new Case(new AttentionShape(1, 2, 33, 41, 15, 9), Power: p, Scale: 0.4f, Kernel: kernel), (int)(p * 10));
            Check(new Case(new AttentionShape(1, 2, 40, 23, 8, 8, KeyValueHeadCount: 1), Causal: true, Power: p, Scale: 0.4f, Kernel: kernel), (int)(p * 10) + 1);
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Bias_mask_and_bias_gradient_match_the_reference(string kernel)
    {
        var shape = new AttentionShape(2, 3, 19, 27, 8, 8);
        long block = (long)shape.QueryCount * shape.KeyCount;
        foreach (long length in new[] { block, block * shape.HeadCount, block * shape.HeadCount * shape.BatchSize })
        {
            float[] bias = Data.Normal(length, 70 + (int)(length % 7));
            bool[] mask = [.. Data.Uniform(length, 80, 1f).Select(x => x > -0.6f)];
            var c = new Case(shape, Causal: length == block, Bias: bias, Mask: mask, Kernel: kernel);
            (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 90);
            Result fast = Run(c, q, k, v, dO, (int)length);
            (double[] dq, double[] dk, double[] dv, double[] dBias) = ReferenceGradients(c, q, k, v, dO, (int)length);
            Gradients.AssertClose(Gradients.ToDouble(fast.Dq), dq, 2e-5 * Gradients.MaxAbs(dq), 1e-4, "dq");
            Gradients.AssertClose(Gradients.ToDouble(fast.Dk), dk, 2e-5 * Gradients.MaxAbs(dk), 1e-4, "dk");
            Gradients.AssertClose(Gradients.ToDouble(fast.Dv), dv, 2e-5 * Gradients.MaxAbs(dv), 1e-4, "dv");
            Gradients.AssertClose(Gradients.ToDouble(fast.DBias!), dBias, 2e-5 * Gradients.MaxAbs(dBias), 1e-4, "dBias");
        }

        // No bias given: the gradient of a zero bias in the layout its length names.
        var plain = new Case(shape, Kernel: kernel);
        (float[] q2, float[] k2, float[] v2, float[] dO2) = Inputs(shape, 91);
        Result noBias = Run(plain, q2, k2, v2, dO2, (int)(block * shape.HeadCount));
        (_, _, _, double[] expected) = ReferenceGradients(plain, q2, k2, v2, dO2, (int)(block * shape.HeadCount));
        Gradients.AssertClose(Gradients.ToDouble(noBias.DBias!), expected, 2e-5 * Gradients.MaxAbs(expected), 1e-4, "dBias without a bias");
    }

    /// <summary>The reference backward against central finite differences of a float64 forward: the formulas themselves.</summary>
    [Fact]
    public void The_reference_backward_matches_finite_differences()
    {
        var shape = new AttentionShape(1, 2, 4, 5, 3, 2, KeyValueHeadCount: 1);
        long block = (long)shape.QueryCount * shape.KeyCount;
        float[] bias = Data.Normal(block * shape.HeadCount, 5);
        bool[] mask = [.. Data.Uniform(block * shape.HeadCount, 6, 1f).Select(x => x > -0.5f)];
        Case[] cases =
        [
            new(shape),
            new(shape, Causal: true, Scale: 0.7f),
            new(shape, Bias: bias, Mask: mask),
            new(shape, Power: 2, Scale: 0.5f),
            new(shape, Power: 1.5f, Causal: true),
            new(shape with { QueryCount = 6 }, Causal: true), // rows that see no key
        ];
        foreach (Case c in cases)
        {
            (float[] q, float[] k, float[] v, float[] dO) = Inputs(c.Shape, 3);
            int biasLength = c.Bias?.Length ?? 0;
            (double[] dq, double[] dk, double[] dv, double[] dBias) = ReferenceGradients(c, q, k, v, dO, biasLength);
            double[] qd = Gradients.ToDouble(q), kd = Gradients.ToDouble(k), vd = Gradients.ToDouble(v), bd = Gradients.ToDouble(c.Bias ?? []);
            Gradients.AssertClose(dq, Gradients.FiniteDifferences(qd, x => Loss(c, x, kd, vd, bd, dO)), 1e-8, 1e-6, $"dq {c}");
            Gradients.AssertClose(dk, Gradients.FiniteDifferences(kd, x => Loss(c, qd, x, vd, bd, dO)), 1e-8, 1e-6, $"dk {c}");
            Gradients.AssertClose(dv, Gradients.FiniteDifferences(vd, x => Loss(c, qd, kd, x, bd, dO)), 1e-8, 1e-6, $"dv {c}");
            if (biasLength > 0)
            {
                Gradients.AssertClose(dBias, Gradients.FiniteDifferences(bd, x => Loss(c, qd, kd, vd, x, dO)), 1e-8, 1e-6, $"dBias {c}");
            }
        }
    }

    [Fact]
    public void Gradients_have_the_same_bits_for_every_thread_count()
    {
        foreach (Case c in new[]
        {
            new Case(new AttentionShape(1, 1, 700, 900, 64, 64)),
            new Case(new AttentionShape(2, 4, 300, 300, 32, 32, KeyValueHeadCount: 2), Causal: true),
            new Case(new AttentionShape(1, 2, 400, 500, 16, 16), Power: 2, Scale: 0.3f),
        })
        {
            (float[] q, float[] k, float[] v, float[] dO) = Inputs(c.Shape, 4);
            Result one = Run(c with { Threads = 1 }, q, k, v, dO), two = Run(c with { Threads = 2 }, q, k, v, dO), three = Run(c with { Threads = 3 }, q, k, v, dO);
            foreach (Result other in new[] { two, three })
            {
                Assert.Equal(one.Dq, other.Dq);
                Assert.Equal(one.Dk, other.Dk);
                Assert.Equal(one.Dv, other.Dv);
            }
        }
    }

    /// <summary>32 query heads over one kv head at n = 2048: the dQ partials of all heads pass the budget, so the key blocks drop from 8 to 7.</summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void Many_query_heads_over_few_kv_heads_take_fewer_key_blocks_and_keep_the_gradients()
    {
        var shape = new AttentionShape(1, 32, 2048, 2048, 64, 64, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 12);
        Result one = Run(new Case(shape, Threads: 1), q, k, v, dO), two = Run(new Case(shape, Threads: 2), q, k, v, dO);
        Assert.Equal(one.Dq, two.Dq);
        Assert.Equal(one.Dk, two.Dk);
        Assert.Equal(one.Dv, two.Dv);

        // Against each head run alone (8 key blocks, checked against the float64 reference elsewhere), summing dK, dV over the heads.
        var single = new AttentionShape(1, 1, 2048, 2048, 64, 64);
        double[] dk = new double[k.Length], dv = new double[v.Length];
        int plane = 2048 * 64;
        for (int h = 0; h < 32; h++)
        {
            Result r = Run(new Case(single, Threads: 2), q.AsSpan(h * plane, plane).ToArray(), k, v, dO.AsSpan(h * plane, plane).ToArray());
            for (int e = 0; e < plane; e++)
            {
                Assert.True(Math.Abs(r.Dq[e] - one.Dq[(h * plane) + e]) <= 1e-6f + (1e-5f * Math.Abs(r.Dq[e])), $"dq head {h} element {e}");
                dk[e] += r.Dk[e];
                dv[e] += r.Dv[e];
            }
        }

        Gradients.AssertClose(Gradients.ToDouble(one.Dk), dk, 1e-5 * Gradients.MaxAbs(dk), 1e-4, "dk");
        Gradients.AssertClose(Gradients.ToDouble(one.Dv), dv, 1e-5 * Gradients.MaxAbs(dv), 1e-4, "dv");
    }

    [Fact]
    public void Grouped_query_gradients_equal_the_repeated_heads_summed()
    {
        var grouped = new AttentionShape(1, 4, 30, 40, 16, 12, KeyValueHeadCount: 2);
        var repeated = grouped with { KeyValueHeadCount = 0 };
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(grouped, 5);
        float[] kr = Repeat(k, 2, 2, 40 * 16), vr = Repeat(v, 2, 2, 40 * 12);
        Result g = Run(new Case(grouped, Causal: true), q, k, v, dO), r = Run(new Case(repeated, Causal: true), q, kr, vr, dO);
        Assert.Equal(r.Dq, g.Dq);
        for (int kv = 0; kv < 2; kv++)
        {
            for (int e = 0; e < 40 * 16; e++)
            {
                Assert.Equal(r.Dk[(2 * kv * 640) + e] + r.Dk[(((2 * kv) + 1) * 640) + e], g.Dk[(kv * 640) + e], 5);
            }
        }
    }

    [Fact]
    public void A_causal_querys_gradient_ignores_future_keys_and_shifted_scores_change_nothing()
    {
        var shape = new AttentionShape(1, 1, 20, 20, 8, 8);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 6);
        Result before = Run(new Case(shape, Causal: true), q, k, v, dO);
        float[] k2 = (float[])k.Clone(), v2 = (float[])v.Clone();
        for (int t = 0; t < 8; t++)
        {
            k2[(19 * 8) + t] += 3f; // the last key: only the last query sees it
            v2[(19 * 8) + t] -= 2f;
        }

        Result after = Run(new Case(shape, Causal: true), q, k2, v2, dO);
        Assert.Equal(before.Dq.AsSpan(0, 19 * 8).ToArray(), after.Dq.AsSpan(0, 19 * 8).ToArray());

        // A constant added to each row's scores (a row bias) changes no gradient of Q, K, V.
        float[] rowBias = new float[20 * 20];
        for (int i = 0; i < 20; i++)
        {
            rowBias.AsSpan(i * 20, 20).Fill(i * 0.37f);
        }

        Result plain = Run(new Case(shape), q, k, v, dO), shifted = Run(new Case(shape, Bias: rowBias), q, k, v, dO);
        foreach ((float[] x, float[] y) in new[] { (plain.Dq, shifted.Dq), (plain.Dk, shifted.Dk), (plain.Dv, shifted.Dv) })
        {
            for (int e = 0; e < x.Length; e++)
            {
                Assert.True(Math.Abs(x[e] - y[e]) <= 1e-5f + (1e-4f * Math.Abs(x[e])), $"element {e}: {x[e]} vs {y[e]}");
            }
        }
    }

    [Fact]
    public void Rows_that_see_no_key_have_zero_gradient()
    {
        var shape = new AttentionShape(1, 1, 9, 4, 4, 4); // causal with nq > nk: the first five queries see nothing
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 7);
        Result r = Run(new Case(shape, Causal: true), q, k, v, dO);
        Assert.All(r.Dq.AsSpan(0, 5 * 4).ToArray(), x => Assert.Equal(0f, x));
        Assert.True(float.IsNegativeInfinity(r.Lse[0]));
        Check(new Case(shape, Causal: true), 7);
    }

    [Fact]
    public void Non_finite_output_gradients_are_rejected_or_propagated_as_asked()
    {
        var shape = new AttentionShape(1, 1, 5, 6, 4, 4);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 8);
        float[] o = new float[shape.OutputLength], lse = new float[5], dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        ExactAttention.Compute(q, k, v, shape, o, lse);
        dO[7] = float.NaN;
        ArgumentException e = Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk, dv));
        Assert.Equal("outputGradient", e.ParamName);
        ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk, dv, new ExactAttentionOptions { AllowNonFinite = true });
        Assert.True(float.IsNaN(dq[4])); // row 1 of dQ reads dO row 1
        Assert.Contains(dv, float.IsNaN);
    }

    [Fact]
    public void Bad_arguments_name_the_parameter()
    {
        var shape = new AttentionShape(1, 1, 5, 6, 4, 4);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 9);
        float[] o = new float[shape.OutputLength], lse = new float[5], dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        ExactAttention.Compute(q, k, v, shape, o, lse);
        Assert.Equal("logSumExp", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse.AsSpan(1), shape, dq, dk, dv)).ParamName);
        Assert.Equal("keyGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk.AsSpan(1), dv)).ParamName);
        Assert.Equal("queryGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, q, dk, dv)).ParamName);
        Assert.Equal("valueGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk, dk)).ParamName);
        lse[2] = float.NaN;
        Assert.Equal("logSumExp", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk, dv)).ParamName);
        Assert.Equal("biasGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, new float[5], shape, dq, dk, dv, new float[7], default)).ParamName);
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, new float[5], shape, dq, dk, dv, new ExactAttentionOptions { Kernel = "nope" })).ParamName);
        var typed = Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, lse, shape, dq, dk, dv, new ExactAttentionOptions { Kernel = "tiled-scalar-q8" }));
        Assert.Contains("forward pass only", typed.Message, StringComparison.Ordinal);
        Assert.Contains("force tiled-scalar", typed.Message, StringComparison.Ordinal);

        // A gradient sharing memory with the bias (read while the gradients are written) is refused, not computed wrong.
        float[] bias = new float[5 * 6];
        var withBias = new ExactAttentionOptions { Bias = bias };
        Assert.Equal("biasGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, new float[5], shape, dq, dk, dv, bias, withBias)).ParamName);
        float[] shared = new float[k.Length + bias.Length];
        var overlapping = new ExactAttentionOptions { Bias = shared.AsMemory(k.Length - 1, bias.Length) };
        Assert.Equal("keyGradient", Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, dO, new float[5], shape, dq, shared.AsSpan(0, k.Length), dv, overlapping)).ParamName);
    }

    /// <summary>Fast vs float64 reference, and the fast error no worse than twice a naive float32 backward's.</summary>
    private static void Check(Case c, int seed)
    {
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(c.Shape, seed);
        Result fast = Run(c, q, k, v, dO);
        (double[] dq, double[] dk, double[] dv, _) = ReferenceGradients(c, q, k, v, dO);
        (float[] nq, float[] nk, float[] nv) = NaiveFloat(c, q, k, v, dO);
        Gradients.AssertFloat32(fast.Dq, nq, dq, $"dq {c.Shape} causal={c.Causal} p={c.Power} {c.Kernel}", c.Power is 0 or >= 1);
        Gradients.AssertFloat32(fast.Dk, nk, dk, $"dk {c.Shape} causal={c.Causal} p={c.Power} {c.Kernel}", c.Power is 0 or >= 1);
        Gradients.AssertFloat32(fast.Dv, nv, dv, $"dv {c.Shape} causal={c.Causal} p={c.Power} {c.Kernel}", c.Power is 0 or >= 1);
    }

    private static float[] Repeat(float[] x, int kvHeads, int group, int plane)
    {
        float[] result = new float[x.Length * group];
        for (int kv = 0; kv < kvHeads; kv++)
        {
            for (int r = 0; r < group; r++)
            {
                x.AsSpan(kv * plane, plane).CopyTo(result.AsSpan(((kv * group) + r) * plane));
            }
        }

        return result;
    }

    /// <summary>The visible, unmasked keys' log-domain scores of row (b, h, i), in double; -inf where hidden.</summary>
    private static double[] Scores<T>(Case c, Func<int, T> q, Func<int, T> k, Func<int, double> bias, int b, int h, int i, Func<T, double> toDouble)
    {
        AttentionShape s = c.Shape;
        int nk = s.KeyCount, d = s.HeadDim, group = s.HeadCount / s.EffectiveKeyValueHeads;
        long kv = ((long)b * s.EffectiveKeyValueHeads) + (h / group), row = ((((long)b * s.HeadCount) + h) * s.QueryCount) + i, block = (long)s.QueryCount * nk;
        double scale = c.Scale ?? (c.Power > 0 ? 1 : 1 / Math.Sqrt(d));
        int visible = c.Causal ? (int)Math.Clamp(i + 1L + nk - s.QueryCount, 0, nk) : nk;
        double[] w = new double[nk];
        for (int j = 0; j < nk; j++)
        {
            long at = ReferenceAttention.BiasIndex(c.Mask?.Length ?? 0, block, s, b, h, i, j);
            if (j >= visible || (c.Mask is not null && !c.Mask[at]))
            {
                w[j] = double.NegativeInfinity;
                continue;
            }

            double dot = 0;
            for (int t = 0; t < d; t++)
            {
                dot += toDouble(q((int)((row * d) + t))) * toDouble(k((int)((((kv * nk) + j) * d) + t)));
            }

            double x = scale * dot;
            w[j] = c.Power > 0 ? (x == 0 ? double.NegativeInfinity : c.Power * Math.Log(Math.Abs(x)))
                : x + (c.Bias is null ? 0 : bias((int)ReferenceAttention.BiasIndex(c.Bias.Length, block, s, b, h, i, j)));
        }

        return w;
    }

    /// <summary>sum(dO o O) of a float64 forward written independently of the library: the loss whose gradient is the backward's.</summary>
    private static double Loss(Case c, double[] q, double[] k, double[] v, double[] bias, float[] dO)
    {
        AttentionShape s = c.Shape;
        int nk = s.KeyCount, dv = s.ValueDim, group = s.HeadCount / s.EffectiveKeyValueHeads;
        double loss = 0;
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long kv = ((long)b * s.EffectiveKeyValueHeads) + (h / group);
                for (int i = 0; i < s.QueryCount; i++)
                {
                    long row = ((((long)b * s.HeadCount) + h) * s.QueryCount) + i;
                    double[] w = Scores(c, x => q[x], x => k[x], x => bias[x], b, h, i, x => x);
                    double max = w.Max();
                    if (double.IsNegativeInfinity(max))
                    {
                        continue;
                    }

                    double sum = w.Sum(x => Math.Exp(x - max));
                    for (int j = 0; j < nk; j++)
                    {
                        double p = Math.Exp(w[j] - max) / sum;
                        for (int e = 0; e < dv; e++)
                        {
                            loss += dO[(row * dv) + e] * p * v[(((kv * nk) + j) * dv) + e];
                        }
                    }
                }
            }
        }

        return loss;
    }

    /// <summary>A straightforward float32 backward (float scores, MathF.Exp, float sums): the yardstick of the 2x rule.</summary>
    private static (float[] Dq, float[] Dk, float[] Dv) NaiveFloat(Case c, float[] q, float[] k, float[] v, float[] dO)
    {
        AttentionShape s = c.Shape;
        int nk = s.KeyCount, d = s.HeadDim, dv = s.ValueDim, group = s.HeadCount / s.EffectiveKeyValueHeads;
        float scale = c.Scale ?? (c.Power > 0 ? 1f : 1f / MathF.Sqrt(d));
        float[] dq = new float[q.Length], dk = new float[k.Length], dvOut = new float[v.Length];
        float[] x = new float[nk], w = new float[nk], o = new float[dv];
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long kv = ((long)b * s.EffectiveKeyValueHeads) + (h / group);
                for (int i = 0; i < s.QueryCount; i++)
                {
                    long row = ((((long)b * s.HeadCount) + h) * s.QueryCount) + i;
                    int visible = c.Causal ? (int)Math.Clamp(i + 1L + nk - s.QueryCount, 0, nk) : nk;
                    float max = float.NegativeInfinity;
                    for (int j = 0; j < visible; j++)
                    {
                        float dot = 0f;
                        for (int t = 0; t < d; t++)
                        {
                            dot += q[(row * d) + t] * k[(((kv * nk) + j) * d) + t];
                        }

                        x[j] = scale * dot;
                        w[j] = c.Power > 0 ? (x[j] == 0f ? float.NegativeInfinity : c.Power * MathF.Log(MathF.Abs(x[j]))) : x[j];
                        max = MathF.Max(max, w[j]);
                    }

                    if (float.IsNegativeInfinity(max))
                    {
                        continue;
                    }

                    float sum = 0f;
                    for (int j = 0; j < visible; j++)
                    {
                        w[j] = MathF.Exp(w[j] - max);
                        sum += w[j];
                    }

                    Array.Clear(o);
                    for (int j = 0; j < visible; j++)
                    {
                        w[j] /= sum;
                        for (int e = 0; e < dv; e++)
                        {
                            o[e] += w[j] * v[(((kv * nk) + j) * dv) + e];
                        }
                    }

                    float delta = 0f;
                    for (int e = 0; e < dv; e++)
                    {
                        delta += dO[(row * dv) + e] * o[e];
                    }

                    for (int j = 0; j < visible; j++)
                    {
                        float dp = 0f;
                        for (int e = 0; e < dv; e++)
                        {
                            dp += dO[(row * dv) + e] * v[(((kv * nk) + j) * dv) + e];
                            dvOut[(((kv * nk) + j) * dv) + e] += w[j] * dO[(row * dv) + e];
                        }

                        float ds = w[j] * (dp - delta);
                        if (c.Power > 0)
                        {
                            ds = x[j] == 0f ? 0f : ds * c.Power / x[j];
                        }

                        for (int t = 0; t < d; t++)
                        {
                            dq[(row * d) + t] += scale * ds * k[(((kv * nk) + j) * d) + t];
                            dk[(((kv * nk) + j) * d) + t] += scale * ds * q[(row * d) + t];
                        }
                    }
                }
            }
        }

        return (dq, dk, dvOut);
    }
}
