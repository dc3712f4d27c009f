using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 5, deliverables 1, 2 and 6: the exact tensor kernel against the float64 oracle.</summary>
public class TensorAttentionTests
{
    private static (float[] Q, ReadOnlyMemory<float>[] K, ReadOnlyMemory<float>[] V) Inputs(TensorAttentionShape s, int seed, float scale = 1f)
    {
        float[] q = Data.Normal(s.QueryLength, seed, scale);
        var k = new ReadOnlyMemory<float>[s.KeyMatrices];
        var v = new ReadOnlyMemory<float>[s.KeyMatrices];
        for (int t = 0; t < s.KeyMatrices; t++)
        {
            k[t] = Data.Normal(s.KeyLength, seed + 10 + t, scale);
            v[t] = Data.Normal(s.ValueLength, seed + 20 + t);
        }

        return (q, k, v);
    }

    private static void AssertClose(float[] actual, double[] expected, string what)
    {
        double worst = Tolerance.MaxAbsError(actual, expected);
        double magnitude = 1 + expected.Max(Math.Abs);
        Assert.True(worst <= 2e-5 * magnitude, $"{what}: error {worst:E3} (magnitude {magnitude:F2})");
    }

    public static TheoryData<int, int> Grid()
    {
        var data = new TheoryData<int, int>();
        foreach (int n in new[] { 1, 2, 7, 33, 65 })
        {
            foreach (int d in new[] { 1, 4, 15, 64 })
            {
                data.Add(n, d);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Exact_kernel_matches_the_float64_oracle_on_awkward_sizes(int n, int d)
    {
        var shape = new TensorAttentionShape(2, n, n, d, d == 64 ? 5 : d);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, n + d, 0.8f);
        var output = new float[shape.OutputLength];
        var options = new TensorAttentionOptions { Scale = 0.5f };
        AttentionRun run = TensorAttention.Compute(q, k, v, shape, output, options);
        // The registry's rule for the largest call: at most 16 virtual rows (n = 1, 2) fit the split-key kernel, which exports row statistics too.
        Assert.StartsWith(n * n <= 16 ? "tensor-splitkey" : "tensor-tiled", run.Kernel);
        Assert.Equal(2.0 * 2 * n * (double)n * n * (d + shape.ValueDim), run.Flops);
        var expected = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q, k, v, shape, expected, options);
        AssertClose(output, expected, $"n={n} d={d}");
    }

    [Theory]
    [InlineData(33, 33, false, null, null)]
    [InlineData(30, 45, true, null, null)]
    [InlineData(45, 30, true, null, null)]
    [InlineData(40, 40, true, 5, 9)]
    [InlineData(40, 40, false, 1, 40)]
    [InlineData(25, 60, false, 7, 3)]
    public void Causal_and_windowed_match_the_masked_oracle(int nq, int nk, bool causal, int? w1, int? w2)
    {
        var shape = new TensorAttentionShape(2, nq, nk, 6, 4);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 5);
        var options = new TensorAttentionOptions { Causal = causal, Windows = w1 is int a ? [a, w2!.Value] : null };
        var output = new float[shape.OutputLength];
        TensorAttention.Compute(q, k, v, shape, output, options);
        var expected = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q, k, v, shape, expected, options);
        AssertClose(output, expected, "causal/windowed");

        // A query before the first key (nq > nk, causal) outputs zeros.
        if (nq > nk)
        {
            Assert.All(output.Take((nq - nk) * 4), x => Assert.Equal(0f, x));
        }
    }

    [Fact]
    public void Order_2_is_ordinary_attention()
    {
        var shape = new TensorAttentionShape(3, 50, 70, 8, 5, Order: 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 9);
        var output = new float[shape.OutputLength];
        TensorAttention.Compute(q, k, v, shape, output, new TensorAttentionOptions { Scale = 0.3f });
        var exact = new float[shape.OutputLength];
        ExactAttention.Compute(q, k[0].Span, v[0].Span, new AttentionShape(1, 3, 50, 70, 8, 5), exact, new ExactAttentionOptions { Scale = 0.3f });
        for (int i = 0; i < exact.Length; i++)
        {
            Assert.Equal(exact[i], output[i], 2e-6f);
        }

        double[] reference = Reference.Attention(q, k[0].ToArray(), v[0].ToArray(), new AttentionShape(1, 3, 50, 70, 8, 5), new Reference.Options(Scale: 0.3));
        AssertClose(output, reference, "order 2 vs the 2-D oracle");
    }

    [Theory]
    [InlineData(4, false)]
    [InlineData(4, true)]
    [InlineData(5, false)]
    public void Higher_orders_match_the_oracle(int order, bool causal)
    {
        var shape = new TensorAttentionShape(1, 9, 9, 4, 3, order);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, order, 0.9f);
        var options = new TensorAttentionOptions { Causal = causal };
        var output = new float[shape.OutputLength];
        TensorAttention.Compute(q, k, v, shape, output, options);
        var expected = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q, k, v, shape, expected, options);
        AssertClose(output, expected, $"order {order}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Output_bits_do_not_depend_on_thread_count(bool causal)
    {
        var shape = new TensorAttentionShape(1, 150, 150, 16, 16);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 3);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        TensorAttention.Compute(q, k, v, shape, one, new TensorAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 1 });
        TensorAttention.Compute(q, k, v, shape, two, new TensorAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 2 });
        Assert.Equal(one, two);
    }

    [Fact]
    public void Bad_inputs_are_clear_errors()
    {
        var shape = new TensorAttentionShape(1, 4, 4, 2, 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 1);
        var output = new float[shape.OutputLength];
        Assert.Contains("2 key", Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, [k[0]], [v[0]], shape, output)).Message);
        Assert.Contains("Windows", Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape, output, new TensorAttentionOptions { Windows = [0, 2] })).Message);
        float[] bad = [.. k[1].ToArray()];
        bad[3] = float.NaN;
        Assert.Contains("key 2 contains NaN at [1, 1] (flat index 3)", Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, [k[0], bad], v, shape, output)).Message);
        Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape with { Order = 1 }, output));
    }
}
