using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Seeded property tests: invariances every softmax attention must satisfy.</summary>
public class PropertyTests
{
    private static float[] Run(float[] q, float[] k, float[] v, AttentionShape s, ExactAttentionOptions o = default)
    {
        var output = new float[s.OutputLength];
        ExactAttention.Compute(q, k, v, s, output, o);
        return output;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Row_weights_sum_to_one(int seed)
    {
        // With V = all ones, every output entry is the row's weight sum.
        var random = new Random(seed);
        int nq = random.Next(1, 300), nk = random.Next(1, 300), d = random.Next(1, 70);
        var s = new AttentionShape(1, 2, nq, nk, d, 3);
        float[] q = Data.Normal(s.QueryLength, seed, 3f), k = Data.Normal(s.KeyLength, seed + 9, 3f);
        float[] ones = [.. Enumerable.Repeat(1f, (int)s.ValueLength)];
        foreach (float x in Run(q, k, ones, s))
        {
            Assert.Equal(1.0, x, 5e-6);
        }
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    public void Permuting_keys_and_values_together_changes_nothing(int seed)
    {
        var s = new AttentionShape(1, 1, 57, 301, 20, 9);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, seed);
        int[] perm = [.. Enumerable.Range(0, s.KeyCount).OrderBy(_ => Random.Shared.Next())];
        var random = new Random(seed);
        random.Shuffle(perm);
        float[] kp = new float[k.Length], vp = new float[v.Length];
        for (int j = 0; j < s.KeyCount; j++)
        {
            Array.Copy(k, perm[j] * s.HeadDim, kp, j * s.HeadDim, s.HeadDim);
            Array.Copy(v, perm[j] * s.ValueDim, vp, j * s.ValueDim, s.ValueDim);
        }

        float[] a = Run(q, k, v, s), b = Run(q, kp, vp, s);
        for (int i = 0; i < a.Length; i++)
        {
            Assert.Equal(a[i], b[i], 1e-5);
        }
    }

    [Fact]
    public void Adding_a_constant_to_a_rows_scores_changes_nothing()
    {
        // A bias constant along each row (different per row) shifts the scores, not the softmax.
        var s = new AttentionShape(1, 1, 40, 270, 16, 16);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 5);
        float[] bias = new float[40 * 270];
        for (int i = 0; i < 40; i++)
        {
            Array.Fill(bias, (i * 37.5f) - 700f, i * 270, 270);
        }

        float[] a = Run(q, k, v, s), b = Run(q, k, v, s, new ExactAttentionOptions { Bias = bias });
        for (int i = 0; i < a.Length; i++)
        {
            Assert.Equal(a[i], b[i], 2e-5);
        }
    }

    [Fact]
    public void Causal_output_ignores_future_keys_and_values()
    {
        var s = new AttentionShape(1, 2, 130, 130, 8, 8);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 8);
        float[] a = Run(q, k, v, s, new ExactAttentionOptions { Causal = true });

        // Scramble everything after key 70: rows 0..70 must keep the same bits.
        float[] k2 = (float[])k.Clone(), v2 = (float[])v.Clone();
        for (int h = 0; h < 2; h++)
        {
            for (int j = 71; j < 130; j++)
            {
                for (int t = 0; t < 8; t++)
                {
                    k2[(h * 130 * 8) + (j * 8) + t] = 1e3f;
                    v2[(h * 130 * 8) + (j * 8) + t] = -1e6f;
                }
            }
        }

        float[] b = Run(q, k2, v2, s, new ExactAttentionOptions { Causal = true });
        for (int h = 0; h < 2; h++)
        {
            Assert.Equal(a.AsSpan(h * 130 * 8, 71 * 8).ToArray(), b.AsSpan(h * 130 * 8, 71 * 8).ToArray());
        }
    }

    public static TheoryData<string, string> NonFiniteCases()
    {
        var data = new TheoryData<string, string>();
        foreach (FastAttention.Kernels.AttentionKernel kernel in KernelsFor.Shape(10, 10))
        {
            foreach (string which in new[] { "query", "key", "value" })
            {
                data.Add(kernel.Name, which);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(NonFiniteCases))]
    public void Non_finite_inputs_are_rejected_by_default_and_propagate_when_allowed(string kernel, string which)
    {
        // Kernels that check K and V in cache (decoding) and kernels checked up front must agree.
        var s = new AttentionShape(1, 2, 10, 10, 4, 4);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 2);
        float[] target = which switch { "query" => q, "key" => k, _ => v };
        target[53] = float.NaN;
        var output = new float[s.OutputLength];
        var options = new ExactAttentionOptions { Kernel = kernel };
        var ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, output, options));
        Assert.Equal(which, ex.ParamName);
        Assert.Contains("index 53", ex.Message);

        target[53] = float.PositiveInfinity;
        target[71] = float.NegativeInfinity;
        Assert.Contains("index 53", Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, output, options)).Message);

        target[53] = float.NaN;
        target[71] = 0.5f;
        ExactAttention.Compute(q, k, v, s, output, options with { AllowNonFinite = true });
        Assert.Contains(output, float.IsNaN);
    }

    public static TheoryData<string, bool, string, float, int> DecodingNonFiniteCases()
    {
        var data = new TheoryData<string, bool, string, float, int>();
        foreach (FastAttention.Kernels.AttentionKernel kernel in KernelsFor.Shape(3, 2500).Where(k => k.Name.StartsWith("splitkey", StringComparison.Ordinal)))
        {
            foreach (bool causal in new[] { false, true })
            {
                foreach ((string which, float bad, int index) in new[] { ("key", float.NaN, 0), ("key", float.NegativeInfinity, 1100 * 64 + 7), ("key", float.PositiveInfinity, (2 * 2500 * 64) - 1), ("value", float.NegativeInfinity, 5), ("value", float.NaN, 2047 * 64), ("value", float.PositiveInfinity, (2 * 2500 * 64) - 1) })
                {
                    data.Add(kernel.Name, causal, which, bad, index);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(DecodingNonFiniteCases))]
    public void Decoding_kernels_find_every_non_finite_key_or_value_without_scanning_clean_chunks(string kernel, bool causal, string which, float bad, int index)
    {
        // Grouped-query heads (2 kv heads for 4 query heads), 3 queries, keys in three chunks (the last partial):
        // -inf keys give -inf scores that look masked, NaN and inf values hide in the sums; all must be found.
        var s = new AttentionShape(1, 4, 3, 2500, 64, 64, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 9);
        (which == "key" ? k : v)[index] = bad;
        var options = new ExactAttentionOptions { Kernel = kernel, Causal = causal };
        var ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, new float[s.OutputLength], options));
        Assert.Equal(which, ex.ParamName);
        Assert.Contains($"index {index}", ex.Message);

        // Finite values whose scores overflow are not an error (the scan that the overflow triggers finds nothing).
        (which == "key" ? k : v)[index] = 0.5f;
        k[64] = 3e38f;
        ExactAttention.Compute(q, k, v, s, new float[s.OutputLength], options);
    }

    [Theory]
    [MemberData(nameof(DecodingKernelNames))]
    public void Decoding_kernels_find_a_non_finite_value_that_no_query_weights(string kernel)
    {
        // The decoding kernels clear K and V from their results; a chunk of keys the mask hides from every query
        // is never weighted, so its values must still be scanned (and its keys, dotted before masking, are).
        var s = new AttentionShape(1, 2, 2, 2500, 16, 16);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 10);
        bool[] mask = [.. Enumerable.Range(0, 2 * 2 * 2500).Select(i => i % 2500 < 1024 || i % 2500 >= 2048)];
        var options = new ExactAttentionOptions { Kernel = kernel, Mask = mask };
        ExactAttention.Compute(q, k, v, s, new float[s.OutputLength], options);

        int index = (1500 * 16) + 3; // head 0, key 1500: in the hidden chunk (keys 1024..2047)
        v[index] = float.NaN;
        var ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, new float[s.OutputLength], options));
        Assert.Equal("value", ex.ParamName);
        Assert.Contains($"index {index}", ex.Message);

        v[index] = 0.5f;
        k[index] = float.NegativeInfinity;
        ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, new float[s.OutputLength], options));
        Assert.Equal("key", ex.ParamName);
        Assert.Contains($"index {index}", ex.Message);
    }

    public static TheoryData<string> DecodingKernelNames() =>
        [.. KernelsFor.Shape(2, 2500).Where(k => k.Name.StartsWith("splitkey", StringComparison.Ordinal)).Select(k => k.Name)];

    [Fact]
    public void Bad_arguments_name_the_input_and_both_sizes()
    {
        var s = new AttentionShape(1, 2, 5, 6, 4, 3);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 2);
        var output = new float[s.OutputLength];

        var ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q.AsSpan(1), k, v, s, output));
        Assert.Equal("query", ex.ParamName);
        Assert.Contains("39", ex.Message);
        Assert.Contains("40", ex.Message);

        Assert.Equal("key", Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k.AsSpan(2), v, s, output)).ParamName);
        Assert.Equal("value", Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v.AsSpan(2), s, output)).ParamName);
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, output.AsSpan(1))).ParamName);
        float[] shared = new float[k.Length + output.Length];
        k.CopyTo(shared, 0);
        Assert.Equal("destination", Assert.Throws<ArgumentException>(
            () => ExactAttention.Compute(q, shared.AsSpan(0, k.Length), v, s, shared.AsSpan(k.Length - 5, output.Length))).ParamName);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s with { KeyValueHeadCount = 3 }, output)).ParamName);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => ExactAttention.Compute([], [], [], new AttentionShape(1, 1, 0, 1, 1, 1), [])).ParamName);
        Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, output, new ExactAttentionOptions { Bias = new float[7] }));
        Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, s, output, new ExactAttentionOptions { Kernel = "no-such-kernel" }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ExactAttention.Compute(q, k, v, s, output, new ExactAttentionOptions { Scale = float.NaN }));
    }
}
