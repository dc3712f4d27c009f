using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The public sliding window (<see cref="ExactAttentionOptions.Window"/>, <see cref="ExactAttentionOptions.Sinks"/>): equal to float64
/// attention with the window written out as a boolean mask, for float32 and low-precision keys and values, decoding and tiled
/// shapes; the flops count the visible pairs; bad values and a windowed backward are refused by name.
/// </summary>
public class WindowOptionTests
{
    public static TheoryData<int, int, int, bool, int, int> Cases() => new()
    {
        { 1, 1000, 64, true, 33, 0 },
        { 1, 1000, 64, true, 256, 4 },
        { 7, 300, 59, true, 1, 3 },
        { 16, 2049, 128, true, 700, 16 },
        { 300, 300, 64, true, 64, 4 },
        { 113, 257, 15, true, 1000, 2 },
        { 50, 200, 32, false, 40, 5 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Windowed_attention_equals_the_float64_reference_with_the_window_as_a_mask(int nq, int nk, int d, bool causal, int window, int sinks)
    {
        var shape = new AttentionShape(1, 4, nq, nk, d, d, 2);
        float[] q = Data.Normal(shape.QueryLength, 1), k = Data.Normal(shape.KeyLength, 2), v = Data.Normal(shape.ValueLength, 3);
        var mask = new bool[nq * nk];
        long visible = 0;
        for (int i = 0; i < nq; i++)
        {
            long p = i + nk - nq;
            for (int j = 0; j < nk; j++)
            {
                mask[(i * nk) + j] = (j > p - window || j < sinks) && (!causal || j <= p);
                visible += mask[(i * nk) + j] ? 1 : 0;
            }
        }

        var options = new ExactAttentionOptions { Causal = causal, Window = window, Sinks = sinks };
        foreach (KvElementType type in new[] { KvElementType.Float32, KvElementType.BFloat16, KvElementType.Q8 })
        {
            KvTensor keys = KvTensor.Encode(k, d, type), values = KvTensor.Encode(v, d, type);
            double[] expected = Reference.Attention(q, keys.ToFloat32(), values.ToFloat32(), shape, new Reference.Options(Causal: causal, Mask: mask));
            var output = new float[shape.OutputLength];
            AttentionRun run = type == KvElementType.Float32
                ? ExactAttention.Compute(q, k, v, shape, output, options)
                : ExactAttention.Compute(q, keys, values, shape, output, options);
            Assert.Equal(2.0 * shape.HeadCount * visible * (2 * d), run.Flops);
            for (int x = 0; x < output.Length; x++)
            {
                Assert.True(Math.Abs(output[x] - expected[x]) <= 2e-5 + (1e-4 * Math.Abs(expected[x])), $"{type} on {run.Kernel}, element {x}: {output[x]} vs {expected[x]}");
            }
        }
    }

    [Fact]
    public void Bad_windows_and_a_windowed_backward_are_refused_by_name()
    {
        var shape = new AttentionShape(1, 1, 4, 8, 4, 4);
        float[] q = Data.Normal(shape.QueryLength, 1), k = Data.Normal(shape.KeyLength, 2), v = Data.Normal(shape.ValueLength, 3);
        var o = new float[shape.OutputLength];
        var negative = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, shape, o, new ExactAttentionOptions { Window = -1 }));
        Assert.Equal("options", negative.ParamName);
        var sinks = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, shape, o, new ExactAttentionOptions { Sinks = 2 }));
        Assert.Contains("sinks", sinks.Message, StringComparison.OrdinalIgnoreCase);

        var lse = new float[4];
        ExactAttention.Compute(q, k, v, shape, o, lse);
        float[] dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        var backward = Assert.Throws<ArgumentException>(() => ExactAttention.Backward(q, k, v, o, o, lse, shape, dq, dk, dv, new ExactAttentionOptions { Window = 3 }));
        Assert.Contains("sliding window", backward.Message, StringComparison.Ordinal);
    }
}
