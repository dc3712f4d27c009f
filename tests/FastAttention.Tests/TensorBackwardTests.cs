using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>docs/algorithms.md §3.3: the order-3 tensor backward against the float64 reference, finite differences, properties.</summary>
public class TensorBackwardTests
{
    /// <summary>dQ, dK1, dK2, dV1, dV2 (or the order-k lists flattened in that order).</summary>
    private sealed record Gradients<T>(T[] Query, T[][] Keys, T[][] Values)
    {
        public IEnumerable<(string Name, T[] Values)> All =>
            new[] { ("dQ", Query) }.Concat(Keys.Select((k, t) => ($"dK{t + 1}", k))).Concat(Values.Select((v, t) => ($"dV{t + 1}", v)));
    }

    private static (float[] Q, ReadOnlyMemory<float>[] K, ReadOnlyMemory<float>[] V, float[] DO) Inputs(TensorAttentionShape s, int seed, float scale = 1f)
    {
        float[] q = Data.Normal(s.QueryLength, seed, scale);
        var k = new ReadOnlyMemory<float>[s.KeyMatrices];
        var v = new ReadOnlyMemory<float>[s.KeyMatrices];
        for (int t = 0; t < s.KeyMatrices; t++)
        {
            k[t] = Data.Normal(s.KeyLength, seed + 10 + t, scale);
            v[t] = Data.Normal(s.ValueLength, seed + 20 + t);
        }

        return (q, k, v, Data.Normal(s.OutputLength, seed + 30));
    }

    /// <summary>The forward with log-sum-exp, then the fast backward.</summary>
    private static (Gradients<float> Gradients, AttentionRun Run) Fast(float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO, TensorAttentionShape s, TensorAttentionOptions options)
    {
        var output = new float[s.OutputLength];
        var lse = new float[s.HeadCount * s.QueryCount];
        TensorAttention.Compute(q, k, v, s, output, lse, options);
        var g = new Gradients<float>(new float[s.QueryLength], [.. k.Select(_ => new float[s.KeyLength])], [.. v.Select(_ => new float[s.ValueLength])]);
        AttentionRun run = TensorAttention.Backward(q, k, v, output, dO, lse, s, g.Query, [.. g.Keys.Select(x => (Memory<float>)x)], [.. g.Values.Select(x => (Memory<float>)x)], options);
        return (g, run);
    }

    private static Gradients<double> Reference(float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO, TensorAttentionShape s, TensorAttentionOptions options)
    {
        var g = new Gradients<double>(new double[s.QueryLength], [.. k.Select(_ => new double[s.KeyLength])], [.. v.Select(_ => new double[s.ValueLength])]);
        ReferenceTensorAttention.Backward(q, k, v, dO, s, g.Query, [.. g.Keys.Select(x => (Memory<double>)x)], [.. g.Values.Select(x => (Memory<double>)x)], options);
        return g;
    }

    private static void AssertClose(Gradients<float> actual, Gradients<double> expected, string what)
    {
        foreach (((string name, float[] a), (_, double[] e)) in actual.All.Zip(expected.All))
        {
            double worst = Tolerance.MaxAbsError(a, e), magnitude = 1 + e.Max(Math.Abs);
            Assert.True(worst <= Tolerance.TensorBackwardRelative * magnitude, $"{what} {name}: error {worst:E3} (magnitude {magnitude:F2})");
        }
    }

    public static TheoryData<int, int> Grid()
    {
        var data = new TheoryData<int, int>();
        foreach (int n in new[] { 1, 2, 7, 33 })
        {
            foreach (int d in new[] { 1, 8, 15, 64 })
            {
                data.Add(n, d);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Backward_matches_the_float64_reference_on_awkward_sizes(int n, int d)
    {
        var shape = new TensorAttentionShape(2, n, n, d, d == 64 ? 5 : d);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, n + d, 0.8f);
        var options = new TensorAttentionOptions { Scale = 0.5f };
        (Gradients<float> fast, AttentionRun run) = Fast(q, k, v, dO, shape, options);
        Assert.StartsWith("tensor-backward-", run.Kernel);
        Assert.Equal(10.0 * 2 * n * (double)n * n * (d + shape.ValueDim) / 2, run.Flops);
        AssertClose(fast, Reference(q, k, v, dO, shape, options), $"n={n} d={d}");
    }

    [Theory]
    [InlineData(33, 33, true, null, null)]
    [InlineData(30, 45, true, null, null)]
    [InlineData(45, 30, true, null, null)]
    [InlineData(40, 40, true, 5, 9)]
    [InlineData(40, 40, false, 1, 40)]
    [InlineData(25, 60, false, 7, 3)]
    [InlineData(113, 113, false, 2, 97)]
    public void Causal_and_windowed_backward_match_the_reference(int nq, int nk, bool causal, int? w1, int? w2)
    {
        var shape = new TensorAttentionShape(2, nq, nk, 6, 4);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 5);
        var options = new TensorAttentionOptions { Causal = causal, Windows = w1 is int a ? [a, w2!.Value] : null };
        (Gradients<float> fast, AttentionRun run) = Fast(q, k, v, dO, shape, options);
        Assert.Equal(2.5 * FlopCount.TensorAttention(shape, options), run.Flops);
        AssertClose(fast, Reference(q, k, v, dO, shape, options), "causal/windowed");
        if (nq > nk)
        {
            Assert.All(fast.Query.Take((nq - nk) * 6), x => Assert.Equal(0f, x)); // queries that see nothing
        }
    }

    [Fact]
    public void A_zero_scale_gives_the_reference_gradients()
    {
        var shape = new TensorAttentionShape(1, 9, 11, 7, 3);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 4);
        var options = new TensorAttentionOptions { Scale = 0f, Causal = true };
        Gradients<float> fast = Fast(q, k, v, dO, shape, options).Gradients;
        Assert.All(fast.Keys[1], x => Assert.Equal(0f, x)); // s = 0: the scores, hence the key gradients, vanish
        AssertClose(fast, Reference(q, k, v, dO, shape, options), "s = 0");
    }

    [Fact]
    public void Forward_log_sum_exp_matches_float64_and_keeps_the_output_bits()
    {
        var shape = new TensorAttentionShape(2, 20, 12, 5, 3);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, _) = Inputs(shape, 2);
        var options = new TensorAttentionOptions { Causal = true, Scale = 0.7f };
        var plain = new float[shape.OutputLength];
        var withLse = new float[shape.OutputLength];
        var lse = new float[2 * 20];
        TensorAttention.Compute(q, k, v, shape, plain, options);
        TensorAttention.Compute(q, k[0].Span, k[1].Span, v[0].Span, v[1].Span, shape, withLse, lse, options);
        Assert.Equal(plain, withLse);
        for (int h = 0; h < 2; h++)
        {
            for (int i = 0; i < 20; i++)
            {
                (int lo, int hi) = (0, i - 8);
                double sum = 0;
                for (int j1 = lo; j1 <= hi; j1++)
                {
                    for (int j2 = lo; j2 <= hi; j2++)
                    {
                        double score = 0;
                        for (int l = 0; l < 5; l++)
                        {
                            score += (double)q[(((h * 20) + i) * 5) + l] * k[0].Span[(((h * 12) + j1) * 5) + l] * k[1].Span[(((h * 12) + j2) * 5) + l];
                        }

                        sum += Math.Exp(0.7 * score);
                    }
                }

                float actual = lse[(h * 20) + i];
                if (hi < 0)
                {
                    Assert.Equal(float.NegativeInfinity, actual); // causal, before the first key
                }
                else
                {
                    Assert.True(Math.Abs(actual - Math.Log(sum)) <= 1e-5 * (1 + Math.Abs(Math.Log(sum))), $"row {i}: {actual} vs {Math.Log(sum)}");
                }
            }
        }
    }

    public static TheoryData<int, bool, int[]?> FiniteDifferenceCases() => new()
    {
        { 3, false, null },
        { 3, true, null },
        { 3, false, [2, 3] },
        { 4, false, null },
        { 4, true, [3, 2, 4] },
    };

    [Theory]
    [MemberData(nameof(FiniteDifferenceCases))]
    public void Reference_and_fast_gradients_match_central_finite_differences(int order, bool causal, int[]? windows)
    {
        var shape = new TensorAttentionShape(1, 3, 4, 2, 2, order);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, order + 40, 0.9f);
        var options = new TensorAttentionOptions { Causal = causal, Windows = windows, Scale = 0.8f };
        Gradients<double> reference = Reference(q, k, v, dO, shape, options);

        // Loss = sum dO o O through the float64 forward; each input entry moved by +-h in float, the step taken as it rounded.
        float[][] inputs = [q, .. k.Select(x => x.ToArray()), .. v.Select(x => x.ToArray())];
        double[][] expected = [.. reference.All.Select(x => x.Values)];
        for (int which = 0; which < inputs.Length; which++)
        {
            for (int e = 0; e < inputs[which].Length; e++)
            {
                float original = inputs[which][e];
                inputs[which][e] = original + 1e-3f;
                double up = Loss(inputs, dO, shape, options), upAt = inputs[which][e];
                inputs[which][e] = original - 1e-3f;
                double down = Loss(inputs, dO, shape, options), downAt = inputs[which][e];
                inputs[which][e] = original;
                double numeric = (up - down) / (upAt - downAt);
                Assert.True(Math.Abs(numeric - expected[which][e]) <= 1e-5 * (1 + Math.Abs(numeric)), $"input {which} entry {e}: reference {expected[which][e]}, finite difference {numeric}");
            }
        }

        (Gradients<float> fast, _) = Fast(q, k, v, dO, shape, options);
        AssertClose(fast, reference, $"order {order}");
    }

    private static double Loss(float[][] inputs, float[] dO, TensorAttentionShape shape, TensorAttentionOptions options)
    {
        int m = shape.KeyMatrices;
        var output = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(inputs[0], [.. inputs.Skip(1).Take(m).Select(x => (ReadOnlyMemory<float>)x)], [.. inputs.Skip(1 + m).Select(x => (ReadOnlyMemory<float>)x)], shape, output, options);
        return output.Zip(dO, (o, g) => o * g).Sum();
    }

    [Fact]
    public void A_causal_query_gradient_ignores_future_keys()
    {
        var shape = new TensorAttentionShape(1, 20, 20, 8, 8);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 7);
        var options = new TensorAttentionOptions { Causal = true };
        float[] before = Fast(q, k, v, dO, shape, options).Gradients.Query;
        ReadOnlyMemory<float>[] changedK = [.. k.Select(x => (ReadOnlyMemory<float>)Changed(x.ToArray(), 10 * 8))];
        ReadOnlyMemory<float>[] changedV = [.. v.Select(x => (ReadOnlyMemory<float>)Changed(x.ToArray(), 10 * 8))];
        float[] after = Fast(q, changedK, changedV, dO, shape, options).Gradients.Query;
        Assert.Equal(before.Take(10 * 8), after.Take(10 * 8)); // queries 0 .. 9 see keys 0 .. 9 only
        Assert.NotEqual(before.Skip(10 * 8), after.Skip(10 * 8));

        static float[] Changed(float[] x, int from)
        {
            for (int e = from; e < x.Length; e++)
            {
                x[e] = (x[e] * 3) + 1;
            }

            return x;
        }
    }

    [Fact]
    public void Keys_outside_every_window_get_zero_gradient()
    {
        // nq = 10 of nk = 40, bottom-right aligned: query 0's limit is key 30, so j1 > 25 and j2 > 18 are the only keys any query sees.
        var shape = new TensorAttentionShape(1, 10, 40, 8, 8);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 8);
        Gradients<float> g = Fast(q, k, v, dO, shape, new TensorAttentionOptions { Windows = [5, 12] }).Gradients;
        Assert.All(g.Keys[0].Take(26 * 8).Concat(g.Values[0].Take(26 * 8)), x => Assert.Equal(0f, x));
        Assert.All(g.Keys[1].Take(19 * 8).Concat(g.Values[1].Take(19 * 8)), x => Assert.Equal(0f, x));
        Assert.Contains(g.Keys[0].Skip(26 * 8), x => x != 0);
        Assert.Contains(g.Values[1].Skip(19 * 8), x => x != 0);
    }

    [Theory]
    [InlineData(false, null, null)]
    [InlineData(true, null, null)]
    [InlineData(false, 30, 70)]
    public void Gradient_bits_do_not_depend_on_thread_count(bool causal, int? w1, int? w2)
    {
        var shape = new TensorAttentionShape(2, 150, 150, 16, 16);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 3);
        TensorAttentionOptions options = new() { Causal = causal, Windows = w1 is int a ? [a, w2!.Value] : null };
        Gradients<float> one = Fast(q, k, v, dO, shape, options with { MaxDegreeOfParallelism = 1 }).Gradients;
        Gradients<float> two = Fast(q, k, v, dO, shape, options with { MaxDegreeOfParallelism = 2 }).Gradients;
        foreach (((string name, float[] x), (_, float[] y)) in one.All.Zip(two.All))
        {
            Assert.True(x.AsSpan().SequenceEqual(y), name);
        }
    }

    [Theory]
    [InlineData(33, false)]
    [InlineData(40, true)]
    public void Float32_error_is_no_worse_than_twice_a_naive_float32_backward(int n, bool causal)
    {
        var shape = new TensorAttentionShape(1, n, n, 15, 15);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 11);
        var options = new TensorAttentionOptions { Causal = causal, Scale = 0.4f };
        Gradients<double> reference = Reference(q, k, v, dO, shape, options);
        Gradients<float> fast = Fast(q, k, v, dO, shape, options).Gradients;
        Gradients<float> naive = NaiveBackward(q, k[0].ToArray(), k[1].ToArray(), v[0].ToArray(), v[1].ToArray(), dO, n, 15, 0.4f, causal);
        foreach ((((string name, float[] f), (_, float[] nv)), (_, double[] r)) in fast.All.Zip(naive.All).Zip(reference.All))
        {
            double fastError = Tolerance.MaxAbsError(f, r), naiveError = Tolerance.MaxAbsError(nv, r);
            Assert.True(fastError <= (Tolerance.NaiveFactor * naiveError) + Tolerance.NaiveFloor, $"{name}: fast {fastError:E3}, naive {naiveError:E3}");
        }
    }

    /// <summary>A straightforward float32 order-3 backward (one head, nq = nk = n, d = dv): the yardstick.</summary>
    private static Gradients<float> NaiveBackward(float[] q, float[] k1, float[] k2, float[] v1, float[] v2, float[] dO, int n, int d, float s, bool causal)
    {
        var g = new Gradients<float>(new float[n * d], [new float[n * d], new float[n * d]], [new float[n * d], new float[n * d]]);
        var p = new float[n, n];
        var dP = new float[n, n];
        for (int i = 0; i < n; i++)
        {
            int hi = causal ? i : n - 1;
            float max = float.NegativeInfinity, sum = 0, dot = 0;
            for (int a = 0; a <= hi; a++)
            {
                for (int b = 0; b <= hi; b++)
                {
                    float score = 0, dp = 0;
                    for (int l = 0; l < d; l++)
                    {
                        score += q[(i * d) + l] * k1[(a * d) + l] * k2[(b * d) + l];
                        dp += dO[(i * d) + l] * v1[(a * d) + l] * v2[(b * d) + l];
                    }

                    p[a, b] = s * score;
                    dP[a, b] = dp;
                    max = MathF.Max(max, p[a, b]);
                }
            }

            for (int a = 0; a <= hi; a++)
            {
                for (int b = 0; b <= hi; b++)
                {
                    p[a, b] = MathF.Exp(p[a, b] - max);
                    sum += p[a, b];
                }
            }

            for (int a = 0; a <= hi; a++)
            {
                for (int b = 0; b <= hi; b++)
                {
                    p[a, b] /= sum;
                    dot += p[a, b] * dP[a, b];
                }
            }

            for (int a = 0; a <= hi; a++)
            {
                for (int b = 0; b <= hi; b++)
                {
                    float dS = p[a, b] * (dP[a, b] - dot);
                    for (int l = 0; l < d; l++)
                    {
                        g.Query[(i * d) + l] += s * dS * k1[(a * d) + l] * k2[(b * d) + l];
                        g.Keys[0][(a * d) + l] += s * dS * q[(i * d) + l] * k2[(b * d) + l];
                        g.Keys[1][(b * d) + l] += s * dS * q[(i * d) + l] * k1[(a * d) + l];
                        g.Values[0][(a * d) + l] += p[a, b] * dO[(i * d) + l] * v2[(b * d) + l];
                        g.Values[1][(b * d) + l] += p[a, b] * dO[(i * d) + l] * v1[(a * d) + l];
                    }
                }
            }
        }

        return g;
    }

    [Fact]
    public void Bad_inputs_are_clear_errors_before_any_work()
    {
        var shape = new TensorAttentionShape(1, 4, 4, 2, 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 1);
        var output = new float[shape.OutputLength];
        var lse = new float[4];
        TensorAttention.Compute(q, k, v, shape, output, lse);
        float[] dq = new float[8], dk1 = new float[8], dk2 = new float[8], dv1 = new float[8], dv2 = new float[8];
        ArgumentException Fails(float[] gradient, float[] key1Gradient, TensorAttentionShape s, TensorAttentionOptions o = default) =>
            Assert.Throws<ArgumentException>(() => TensorAttention.Backward(q, k[0].Span, k[1].Span, v[0].Span, v[1].Span, output, gradient, lse, s, dq, key1Gradient, dk2, dv1, dv2, o));

        float[] bad = [.. dO];
        bad[5] = float.NaN;
        ArgumentException nan = Fails(bad, dk1, shape);
        Assert.Equal("outputGradient", nan.ParamName);
        Assert.Contains("outputGradient contains NaN at [2, 1]", nan.Message);
        bad[5] = float.PositiveInfinity;
        Assert.Equal("outputGradient", Fails(bad, dk1, shape).ParamName);
        Assert.Equal("key1Gradient", Fails(dO, new float[7], shape).ParamName);
        Assert.Equal("shape", Fails(dO, dk1, shape with { QueryCount = 0 }).ParamName);
        Assert.Equal("shape", Fails(dO, dk1, shape with { Order = 4 }).ParamName);
        Assert.Equal("options", Fails(dO, dk1, shape, new TensorAttentionOptions { Windows = [1] }).ParamName);
        var overlap = Assert.Throws<ArgumentException>(() => TensorAttention.Backward(q, k[0].Span, k[1].Span, v[0].Span, v[1].Span, output, dO, lse, shape, q, dk1, dk2, dv1, dv2));
        Assert.Equal("queryGradient", overlap.ParamName);
        Assert.Contains("overlaps query", overlap.Message);
        Assert.Equal("logSumExp", Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape, output, new float[3])).ParamName);
        ArgumentException LseFails(float[] g) => Assert.Throws<ArgumentException>(() =>
            TensorAttention.Backward(q, k[0].Span, k[1].Span, v[0].Span, v[1].Span, output, dO, lse, shape, dq, dk1, dk2, dv1, dv2, default, g));
        Assert.Equal("logSumExpGradient", LseFails(new float[3]).ParamName);
        Assert.Equal("logSumExpGradient", LseFails([0, float.NaN, 0, 0]).ParamName);
    }

    [Fact]
    public void The_log_sum_exp_gradient_adds_P_times_it_to_the_score_gradient()
    {
        // dL_i/dS = P, so with gL the score gradient is P (dP - D + gL): the same as the plain backward with D lowered by gL.
        // A zero gL is the plain backward bit for bit; values' gradients never depend on it; and with dO = 0 the query
        // gradient is s gL sum P (k1 o k2) computed here in float64.
        var shape = new TensorAttentionShape(2, 5, 6, 3, 4);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, float[] dO) = Inputs(shape, 8);
        var output = new float[shape.OutputLength];
        var lse = new float[shape.HeadCount * shape.QueryCount];
        TensorAttention.Compute(q, k, v, shape, output, lse);
        float[] Run(float[] outputGradient, float[]? g, out float[] dv1)
        {
            float[] dq = new float[shape.QueryLength], dk1 = new float[shape.KeyLength], dk2 = new float[shape.KeyLength], dv2 = new float[shape.ValueLength];
            dv1 = new float[shape.ValueLength];
            TensorAttention.Backward(q, k[0].Span, k[1].Span, v[0].Span, v[1].Span, output, outputGradient, lse, shape, dq, dk1, dk2, dv1, dv2, default, g);
            return dq;
        }

        float[] gL = Data.Normal(lse.Length, 99);
        Assert.Equal(Run(dO, null, out var plainDv1), Run(dO, new float[lse.Length], out _));
        Assert.NotEqual(Run(dO, null, out _), Run(dO, gL, out var withDv1));
        Assert.Equal(plainDv1, withDv1);

        float[] onlyLse = Run(new float[dO.Length], gL, out _);
        float[] k1 = k[0].ToArray(), k2 = k[1].ToArray();
        int n = shape.KeyCount, d = shape.HeadDim;
        double s = 1.0 / d;
        for (int h = 0; h < shape.HeadCount; h++)
        {
            for (int i = 0; i < shape.QueryCount; i++)
            {
                var scores = new double[n * n];
                for (int a = 0; a < n; a++)
                {
                    for (int b = 0; b < n; b++)
                    {
                        double dot = 0;
                        for (int l = 0; l < d; l++)
                        {
                            dot += (double)q[(((h * shape.QueryCount) + i) * d) + l] * k1[(((h * n) + a) * d) + l] * k2[(((h * n) + b) * d) + l];
                        }

                        scores[(a * n) + b] = s * dot;
                    }
                }

                double max = scores.Max(), z = scores.Sum(x => Math.Exp(x - max));
                for (int l = 0; l < d; l++)
                {
                    double expected = 0;
                    for (int a = 0; a < n; a++)
                    {
                        for (int b = 0; b < n; b++)
                        {
                            expected += Math.Exp(scores[(a * n) + b] - max) / z * k1[(((h * n) + a) * d) + l] * k2[(((h * n) + b) * d) + l];
                        }
                    }

                    expected *= s * gL[(h * shape.QueryCount) + i];
                    Assert.True(Math.Abs(onlyLse[(((h * shape.QueryCount) + i) * d) + l] - expected) <= 1e-5 + (1e-4 * Math.Abs(expected)), $"dq[{h}, {i}, {l}]: {onlyLse[(((h * shape.QueryCount) + i) * d) + l]} vs {expected}");
                }
            }
        }
    }
}
