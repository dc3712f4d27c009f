using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>LevAttention's forward with log-sum-exp and its backward on the kept keys (the selection held fixed).</summary>
public class LevBackwardTests
{
    private sealed record Grads(float[] Query, float[] Key, float[] Value);

    /// <summary>Seeded unit-normal Q, K, V and dO.</summary>
    private static (float[] Q, float[] K, float[] V, float[] DO) Inputs(AttentionShape shape, int seed)
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, seed);
        return (q, k, v, Data.Normal(shape.OutputLength, seed + 3));
    }

    /// <summary>The forward with log-sum-exp, then the backward for <paramref name="dO"/>.</summary>
    private static (Grads Gradients, IReadOnlyList<LevSelection> Selections) Run(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, LevAttentionOptions options)
    {
        float[] o = new float[shape.OutputLength], lse = new float[shape.BatchSize * shape.HeadCount * shape.QueryCount];
        IReadOnlyList<LevSelection> selections = LevAttention.Compute(q, k, v, shape, o, lse, options);
        var g = new Grads(new float[shape.QueryLength], new float[shape.KeyLength], new float[shape.ValueLength]);
        LevAttention.Backward(q, k, v, o, dO, lse, selections, shape, g.Query, g.Key, g.Value, options);
        return (g, selections);
    }

    /// <summary>The float64 reference backward on each head's gathered kept keys, scattered to full size (zero elsewhere).</summary>
    private static (double[] Query, double[] Key, double[] Value) Reference(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, IReadOnlyList<LevSelection> selections, LevAttentionOptions options)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount, nq = shape.QueryCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        double[] dq = new double[shape.QueryLength], dk = new double[shape.KeyLength], dvv = new double[shape.ValueLength];
        foreach (LevSelection s in selections)
        {
            int kv = (s.Batch * kvHeads) + s.KvHead, firstHead = (s.Batch * shape.HeadCount) + (s.KvHead * group), u = s.Keys.Length;
            var sub = new AttentionShape(1, group, nq, u, d, dv, KeyValueHeadCount: 1);
            float[] ks = LevAttention.Gather(k.AsSpan(kv * nk * d, nk * d), s.Keys, d), vs = LevAttention.Gather(v.AsSpan(kv * nk * dv, nk * dv), s.Keys, dv);
            float[] qs = q[(firstHead * nq * d)..((firstHead + group) * nq * d)], dOs = dO[(firstHead * nq * dv)..((firstHead + group) * nq * dv)];
            double[] gq = new double[qs.Length], gk = new double[ks.Length], gv = new double[vs.Length];
            if (options.Power > 0)
            {
                ReferenceAttention.PowerBackward(qs, ks, vs, dOs, sub, gq, gk, gv, options.Power, options.Scale ?? 1);
            }
            else
            {
                ReferenceAttention.Backward(qs, ks, vs, dOs, sub, gq, gk, gv, options.Scale);
            }

            gq.CopyTo(dq, firstHead * nq * d);
            for (int x = 0; x < u; x++)
            {
                Array.Copy(gk, x * d, dk, ((kv * nk) + s.Keys[x]) * d, d);
                Array.Copy(gv, x * dv, dvv, ((kv * nk) + s.Keys[x]) * dv, dv);
            }
        }

        return (dq, dk, dvv);
    }

    /// <summary>
    /// A straightforward float32 backward over the kept keys (recomputing the attention weights row by row), in double when
    /// <typeparamref name="T"/> is double: the naive baseline of the error comparison and, in double, the finite-difference forward.
    /// </summary>
    private static (T[] Query, T[] Key, T[] Value, T[] Output) Naive<T>(T[] q, T[] k, T[] v, T[] dO, AttentionShape shape, IReadOnlyList<LevSelection> selections, LevAttentionOptions options)
        where T : System.Numerics.IFloatingPointIeee754<T>
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount, nq = shape.QueryCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        bool power = options.Power > 0;
        T p = T.CreateChecked(options.Power), scale = T.CreateChecked(options.Scale ?? (power ? 1 : 1 / Math.Sqrt(d)));
        T[] dq = new T[q.Length], dk = new T[k.Length], dvv = new T[v.Length], o = new T[dO.Length];
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int h = 0; h < shape.HeadCount; h++)
            {
                int kv = (b * kvHeads) + (h / group);
                int[] kept = selections[kv].Keys;
                T[] x = new T[kept.Length], a = new T[kept.Length];
                for (int i = 0; i < nq; i++)
                {
                    int qi = (((b * shape.HeadCount) + h) * nq) + i;
                    T z = T.Zero, top = T.NegativeInfinity, dot = T.Zero;
                    for (int u = 0; u < kept.Length; u++)
                    {
                        T s = T.Zero;
                        for (int t = 0; t < d; t++)
                        {
                            s += q[(qi * d) + t] * k[(((kv * nk) + kept[u]) * d) + t];
                        }

                        x[u] = scale * s;
                        top = T.Max(top, x[u]);
                    }

                    for (int u = 0; u < kept.Length; u++)
                    {
                        a[u] = power ? T.Pow(T.Abs(x[u]), p) : T.Exp(x[u] - top);
                        z += a[u];
                    }

                    T[] dA = new T[kept.Length];
                    for (int u = 0; u < kept.Length; u++)
                    {
                        a[u] = z == T.Zero ? T.Zero : a[u] / z;
                        for (int c = 0; c < dv; c++)
                        {
                            T vc = v[(((kv * nk) + kept[u]) * dv) + c];
                            o[(qi * dv) + c] += a[u] * vc;
                            dA[u] += dO[(qi * dv) + c] * vc;
                            dvv[(((kv * nk) + kept[u]) * dv) + c] += a[u] * dO[(qi * dv) + c];
                        }

                        dot += a[u] * dA[u];
                    }

                    for (int u = 0; u < kept.Length; u++)
                    {
                        // Softmax: dx = a (dA - a.dA). Power: dx = (dA - a.dA) / Z * p |x|^(p-1) sign(x).
                        T dx = power
                            ? (z == T.Zero ? T.Zero : (dA[u] - dot) / z * p * T.Pow(T.Abs(x[u]), p - T.One) * T.CreateChecked(T.Sign(x[u])))
                            : a[u] * (dA[u] - dot);
                        for (int t = 0; t < d; t++)
                        {
                            dq[(qi * d) + t] += scale * dx * k[(((kv * nk) + kept[u]) * d) + t];
                            dk[(((kv * nk) + kept[u]) * d) + t] += scale * dx * q[(qi * d) + t];
                        }
                    }
                }
            }
        }

        return (dq, dk, dvv, o);
    }

    public static TheoryData<int, int, int, double> Grid()
    {
        var data = new TheoryData<int, int, int, double>();
        foreach (int nq in new[] { 1, 7, 33 })
        {
            foreach (int nk in new[] { 1, 2, 31, 113 })
            {
                foreach (int d in new[] { 1, 8, 15, 64 })
                {
                    foreach (double power in new[] { 0, 1.5 })
                    {
                        data.Add(nq, nk, d, power);
                    }
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Backward_matches_the_float64_reference_on_the_kept_keys_and_beats_twice_a_naive_float32_backward(int nq, int nk, int d, double power)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, 5, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, (nq * 1000) + (nk * 10) + d);
        var options = new LevAttentionOptions { Top = Math.Max(1, nk / 3), KeepLast = 1, Power = power };
        (Grads g, IReadOnlyList<LevSelection> selections) = Run(q, k, v, dO, shape, options);
        (double[] rq, double[] rk, double[] rv) = Reference(q, k, v, dO, shape, selections, options);
        (float[] nq32, float[] nk32, float[] nv32, _) = Naive(q, k, v, dO, shape, selections, options);
        // Power attention with d = 1 (the weights |k_j|^p / sum |k_l|^p do not depend on q) or one kept key (weight 1) has dQ (and
        // with one key dK) zero in exact arithmetic, a cancellation of the kernel's dX = p W (dP - D) / X terms: held to the
        // helper's root-mean-square rule for ill-conditioned gradients instead of the naive comparison.
        bool wellConditioned = !(power > 0 && (d == 1 || selections.Any(s => s.Keys.Length == 1)));
        Gradients.AssertFloat32(g.Query, nq32, rq, $"dQ nq {nq} nk {nk} d {d} p {power}", wellConditioned);
        Gradients.AssertFloat32(g.Key, nk32, rk, $"dK nq {nq} nk {nk} d {d} p {power}", wellConditioned);
        Gradients.AssertFloat32(g.Value, nv32, rv, $"dV nq {nq} nk {nk} d {d} p {power}");
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(2.0)]
    [InlineData(1.5)]
    public void Backward_matches_central_finite_differences_in_float64_with_the_selection_fixed(double power)
    {
        var shape = new AttentionShape(1, 2, 3, 7, 3, 2, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 17);
        var options = new LevAttentionOptions { Top = 3, KeepFirst = 1, Power = power };
        (Grads g, IReadOnlyList<LevSelection> selections) = Run(q, k, v, dO, shape, options);
        double[] qd = Gradients.ToDouble(q), kd = Gradients.ToDouble(k), vd = Gradients.ToDouble(v), dOd = Gradients.ToDouble(dO);
        double Loss(double[] qx, double[] kx, double[] vx) => Naive(qx, kx, vx, dOd, shape, selections, options).Output.Zip(dOd, (o, w) => o * w).Sum();
        double[] fq = Gradients.FiniteDifferences(qd, x => Loss(x, kd, vd)), fk = Gradients.FiniteDifferences(kd, x => Loss(qd, x, vd)), fv = Gradients.FiniteDifferences(vd, x => Loss(qd, kd, x));
        Gradients.AssertClose(Gradients.ToDouble(g.Query), fq, 1e-4, 1e-4, $"dQ p {power}");
        Gradients.AssertClose(Gradients.ToDouble(g.Key), fk, 1e-4, 1e-4, $"dK p {power}");
        Gradients.AssertClose(Gradients.ToDouble(g.Value), fv, 1e-4, 1e-4, $"dV p {power}");

        // A key outside the selection does not move the output at all (the selection is held fixed): both gradients are exactly 0.
        int[] outside = [.. Enumerable.Range(0, shape.KeyCount).Except(selections[0].Keys)];
        Assert.NotEmpty(outside);
        Assert.All(outside.SelectMany(j => Enumerable.Range(j * 3, 3)), e => Assert.True(fk[e] == 0 && g.Key[e] == 0, $"dK[{e}]"));
        Assert.All(outside.SelectMany(j => Enumerable.Range(j * 2, 2)), e => Assert.True(fv[e] == 0 && g.Value[e] == 0, $"dV[{e}]"));
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(2.0)]
    public void Keys_outside_the_selection_get_exactly_zero_gradient_with_grouped_query_heads(double power)
    {
        var shape = new AttentionShape(2, 4, 9, 40, 8, 3, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 23);
        var options = new LevAttentionOptions { Top = 6, KeepLast = 2, Power = power };
        (Grads g, IReadOnlyList<LevSelection> selections) = Run(q, k, v, dO, shape, options);
        Assert.Equal(4, selections.Count);
        foreach (LevSelection s in selections)
        {
            for (int j = 0; j < shape.KeyCount; j++)
            {
                int kv = (s.Batch * 2) + s.KvHead;
                float[] rowK = g.Key[(((kv * 40) + j) * 8)..(((kv * 40) + j + 1) * 8)], rowV = g.Value[(((kv * 40) + j) * 3)..(((kv * 40) + j + 1) * 3)];
                bool kept = s.Keys.Contains(j);
                Assert.True(kept ? rowK.Any(x => x != 0) && rowV.Any(x => x != 0) : rowK.All(x => x == 0) && rowV.All(x => x == 0), $"batch {s.Batch} kv head {s.KvHead} key {j} kept {kept}");
            }
        }

        (double[] rq, double[] rk, double[] rv) = Reference(q, k, v, dO, shape, selections, options);
        Tolerance.AssertExact(g.Query, rq, "dQ");
        Tolerance.AssertExact(g.Key, rk, "dK");
        Tolerance.AssertExact(g.Value, rv, "dV");
    }

    [Fact]
    public void The_forward_with_log_sum_exp_returns_the_kept_keys_log_sum_exp_and_the_same_output()
    {
        var shape = new AttentionShape(1, 2, 20, 90, 16, 4, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 31);
        foreach (double power in new[] { 0, 2.0 })
        {
            var options = new LevAttentionOptions { Top = 12, Power = power };
            float[] plain = new float[shape.OutputLength], o = new float[shape.OutputLength], lse = new float[40];
            LevAttention.Compute(q, k, v, shape, plain, options);
            LevSelection s = LevAttention.Compute(q, k, v, shape, o, lse, options).Single();
            Assert.Equal(plain, o);
            double scale = power > 0 ? 1 : 1 / Math.Sqrt(16);
            for (int row = 0; row < 40; row++)
            {
                double[] x = [.. s.Keys.Select(j => scale * Enumerable.Range(0, 16).Sum(t => (double)q[(row * 16) + t] * k[(j * 16) + t]))];
                double expected = power > 0 ? Math.Log(x.Sum(y => Math.Pow(Math.Abs(y), power))) : x.Max() + Math.Log(x.Sum(y => Math.Exp(y - x.Max())));
                Assert.True(Math.Abs(lse[row] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"row {row} p {power}: {lse[row]} vs {expected}");
            }
        }
    }

    [Fact]
    public void One_and_two_threads_give_the_same_bits()
    {
        var shape = new AttentionShape(2, 4, 70, 300, 16, 8, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 41);
        foreach (double power in new[] { 0, 1.5 })
        {
            var options = new LevAttentionOptions { Top = 40, KeepFirst = 2, Power = power };
            Grads one = Run(q, k, v, dO, shape, options with { MaxDegreeOfParallelism = 1 }).Gradients;
            Grads two = Run(q, k, v, dO, shape, options with { MaxDegreeOfParallelism = 2 }).Gradients;
            Assert.Equal(one.Query, two.Query);
            Assert.Equal(one.Key, two.Key);
            Assert.Equal(one.Value, two.Value);
        }
    }

    [Fact]
    public void Non_finite_output_gradients_and_mismatched_selections_are_rejected_before_any_work()
    {
        var shape = new AttentionShape(1, 2, 5, 12, 4, 3, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 51);
        var options = new LevAttentionOptions { Top = 4 };
        float[] o = new float[shape.OutputLength], lse = new float[10];
        IReadOnlyList<LevSelection> selections = LevAttention.Compute(q, k, v, shape, o, lse, options);
        float[] dO = Data.Normal(shape.OutputLength, 52), dq = new float[shape.QueryLength], dk = new float[shape.KeyLength], dv = new float[shape.ValueLength];
        Array.Fill(dk, 7f);
        string Rejected(float[] gradient, IReadOnlyList<LevSelection> s, LevAttentionOptions opt) =>
            Assert.Throws<ArgumentException>(() => LevAttention.Backward(q, k, v, o, gradient, lse, s, shape, dq, dk, dv, opt)).ParamName!;

        float[] bad = [.. dO];
        bad[7] = float.NaN;
        Assert.Equal("outputGradient", Rejected(bad, selections, options));
        bad[7] = float.PositiveInfinity;
        Assert.Equal("outputGradient", Rejected(bad, selections, options with { Power = 2 }));
        Assert.Equal("selections", Rejected(dO, [.. selections, selections[0]], options));
        Assert.Equal("selections", Rejected(dO, [selections[0] with { Keys = [3, 12] }], options));
        Assert.Equal("selections", Rejected(dO, [selections[0] with { Keys = [5, 2] }], options));
        Assert.Equal("selections", Rejected(dO, [selections[0] with { KvHead = 1 }], options));
        Assert.Equal("selections", Rejected(dO, [selections[0] with { Keys = null! }], options));
        Assert.Equal("outputGradient", Assert.Throws<ArgumentException>(() => LevAttention.Backward(q, k, v, o, dO.AsSpan(1), lse, selections, shape, dq, dk, dv, options)).ParamName);
        Assert.Equal("keyGradient", Assert.Throws<ArgumentException>(() => LevAttention.Backward(q, k, v, o, dO, lse, selections, shape, dq, k, dv, options)).ParamName);
        Assert.All(dk, x => Assert.Equal(7f, x)); // nothing was written
    }

    [Fact]
    public void A_head_that_keeps_no_key_outputs_zeros_and_gets_zero_gradients_and_empty_shapes_fail_clearly()
    {
        var shape = new AttentionShape(1, 1, 4, 6, 3, 2);
        float[] q = Data.Normal(shape.QueryLength, 61), k = new float[shape.KeyLength], v = Data.Normal(shape.ValueLength, 62);
        var options = new LevAttentionOptions { Eps = 0.5 }; // all-zero keys: rank 0, every score 0, no key reaches eps
        float[] o = Data.Normal(shape.OutputLength, 63), lse = new float[4], dO = Data.Normal(shape.OutputLength, 64);
        LevSelection s = LevAttention.Compute(q, k, v, shape, o, lse, options).Single();
        Assert.Empty(s.Keys);
        Assert.All(o, x => Assert.Equal(0f, x));
        Assert.All(lse, x => Assert.Equal(float.NegativeInfinity, x));
        float[] dq = Data.Normal(shape.QueryLength, 65), dk = Data.Normal(shape.KeyLength, 66), dv = Data.Normal(shape.ValueLength, 67);
        LevAttention.Backward(q, k, v, o, dO, lse, [s], shape, dq, dk, dv, options);
        Assert.All(dq.Concat(dk).Concat(dv), x => Assert.Equal(0f, x));

        var empty = new AttentionShape(1, 1, 0, 6, 3, 2);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => LevAttention.Backward([], k, v, [], [], [], [s], empty, [], dk, dv, options)).ParamName);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => LevAttention.Compute([], k, v, empty, [], [], options)).ParamName);
    }
}
