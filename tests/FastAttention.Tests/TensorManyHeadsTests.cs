using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// docs/algorithms.md §3.4: many small heads (the training shape) run in parallel with one thread each. Their bits must not
/// depend on the thread count, nor on whether a head ran beside others or alone, and they still match the float64 references.
/// </summary>
public class TensorManyHeadsTests
{
    private const int Heads = 37;

    /// <summary>O, log-sum-exp, dQ, dK1, dK2, dV1, dV2 of one forward (with log-sum-exp) and backward.</summary>
    private static float[][] Step(float[] q, float[][] k, float[][] v, float[] dO, TensorAttentionShape s, TensorAttentionOptions options)
    {
        var o = new float[s.OutputLength];
        var lse = new float[s.HeadCount * s.QueryCount];
        TensorAttention.Compute(q, k[0], k[1], v[0], v[1], s, o, lse, options);
        float[] dq = new float[s.QueryLength], dk1 = new float[s.KeyLength], dk2 = new float[s.KeyLength], dv1 = new float[s.ValueLength], dv2 = new float[s.ValueLength];
        TensorAttention.Backward(q, k[0], k[1], v[0], v[1], o, dO, lse, s, dq, dk1, dk2, dv1, dv2, options);
        return [o, lse, dq, dk1, dk2, dv1, dv2];
    }

    private static (float[] Q, float[][] K, float[][] V, float[] DO) Inputs(TensorAttentionShape s, int seed) =>
        (Data.Normal(s.QueryLength, seed), [Data.Normal(s.KeyLength, seed + 1), Data.Normal(s.KeyLength, seed + 2)],
         [Data.Normal(s.ValueLength, seed + 3), Data.Normal(s.ValueLength, seed + 4)], Data.Normal(s.OutputLength, seed + 5));

    private static TensorAttentionOptions Mode(string mode) => mode switch
    {
        "causal" => new() { Causal = true },
        "window" => new() { Windows = [3, 2] },
        _ => default,
    };

    private static readonly string[] Names = ["O", "logSumExp", "dQ", "dK1", "dK2", "dV1", "dV2"];

    public static TheoryData<int, string> Grid()
    {
        var data = new TheoryData<int, string>();
        foreach (int n in new[] { 1, 2, 7, 13 })
        {
            foreach (string mode in new[] { "full", "causal", "window" })
            {
                data.Add(n, mode);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Many_head_bits_do_not_depend_on_thread_count(int n, string mode)
    {
        var shape = new TensorAttentionShape(Heads, n, n, 15, 9);
        (float[] q, float[][] k, float[][] v, float[] dO) = Inputs(shape, 100 + n);
        float[][] one = Step(q, k, v, dO, shape, Mode(mode) with { MaxDegreeOfParallelism = 1 });
        foreach (int threads in new[] { 2, 0 })
        {
            float[][] other = Step(q, k, v, dO, shape, Mode(mode) with { MaxDegreeOfParallelism = threads });
            for (int x = 0; x < one.Length; x++)
            {
                Assert.True(one[x].AsSpan().SequenceEqual(other[x]), $"{Names[x]}: 1 thread and {threads} differ (n = {n}, {mode})");
            }
        }
    }

    [Theory]
    [InlineData(13, "full")]
    [InlineData(13, "causal")]
    [InlineData(7, "window")]
    public void A_heads_bits_do_not_depend_on_running_beside_other_heads(int n, string mode)
    {
        var shape = new TensorAttentionShape(Heads, n, n, 15, 9);
        (float[] q, float[][] k, float[][] v, float[] dO) = Inputs(shape, 200 + n);
        float[][] all = Step(q, k, v, dO, shape, Mode(mode) with { MaxDegreeOfParallelism = 2 });
        var single = shape with { HeadCount = 1 };
        foreach (int h in new[] { 0, 18, Heads - 1 })
        {
            float[] Slice(float[] x, long length) => x.AsSpan((int)(h * length), (int)length).ToArray();
            float[][] alone = Step(Slice(q, single.QueryLength), [Slice(k[0], single.KeyLength), Slice(k[1], single.KeyLength)],
                [Slice(v[0], single.ValueLength), Slice(v[1], single.ValueLength)], Slice(dO, single.OutputLength), single, Mode(mode) with { MaxDegreeOfParallelism = 2 });
            long[] lengths = [single.OutputLength, n, single.QueryLength, single.KeyLength, single.KeyLength, single.ValueLength, single.ValueLength];
            for (int x = 0; x < all.Length; x++)
            {
                Assert.True(Slice(all[x], lengths[x]).AsSpan().SequenceEqual(alone[x]), $"{Names[x]} of head {h}: alone and beside {Heads - 1} others differ ({mode})");
            }
        }
    }

    [Theory]
    [InlineData("full")]
    [InlineData("causal")]
    [InlineData("window")]
    public void Many_heads_match_the_float64_references(string mode)
    {
        var shape = new TensorAttentionShape(Heads, 7, 7, 8, 15);
        (float[] q, float[][] k, float[][] v, float[] dO) = Inputs(shape, 300);
        TensorAttentionOptions options = Mode(mode) with { MaxDegreeOfParallelism = 2 };
        float[][] fast = Step(q, k, v, dO, shape, options);
        ReadOnlyMemory<float>[] keys = [k[0], k[1]], values = [v[0], v[1]];
        var output = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q, keys, values, shape, output, options);
        double[] dq = new double[shape.QueryLength], dk1 = new double[shape.KeyLength], dk2 = new double[shape.KeyLength], dv1 = new double[shape.ValueLength], dv2 = new double[shape.ValueLength];
        ReferenceTensorAttention.Backward(q, keys, values, dO, shape, dq, [dk1, dk2], [dv1, dv2], options);
        double[][] expected = [output, [], dq, dk1, dk2, dv1, dv2];
        for (int x = 0; x < fast.Length; x++)
        {
            if (x == 1)
            {
                continue; // the log-sum-exp's own check is TensorBackwardTests.Forward_log_sum_exp_matches_float64_and_keeps_the_output_bits
            }

            double worst = Tolerance.MaxAbsError(fast[x], expected[x]), magnitude = 1 + expected[x].Max(Math.Abs);
            Assert.True(worst <= Tolerance.TensorBackwardRelative * magnitude, $"{Names[x]} ({mode}): error {worst:E3} (magnitude {magnitude:F2})");
        }
    }

    [Fact]
    public void Order_3_span_overloads_reject_a_destination_inside_a_key_or_value()
    {
        var shape = new TensorAttentionShape(3, 4, 4, 4, 4);
        (float[] q, float[][] k, float[][] v, _) = Inputs(shape, 400);
        float[] shared = [.. k[0], .. new float[8]];
        var error = Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, shared.AsSpan(0, (int)shape.KeyLength), k[1], v[0], v[1], shape, shared.AsSpan(8, (int)shape.OutputLength)));
        Assert.Equal("destination", error.ParamName);
        Assert.Contains("key 1", error.Message, StringComparison.Ordinal);
        float[] lse = new float[shape.HeadCount * shape.QueryCount];
        error = Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k[0], k[1], shared.AsSpan(0, (int)shape.ValueLength), v[1], shape, shared.AsSpan(8, (int)shape.OutputLength), lse));
        Assert.Equal("destination", error.ParamName);
        Assert.Contains("value 1", error.Message, StringComparison.Ordinal);
    }
}
