using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>The exact forward's log-sum-exp output and the public partial merge built on it, against float64 references.</summary>
public class LogSumExpTests
{
    /// <summary>float64: lse[b, h, i] = max_j s_ij + ln sum_j e^(s_ij - max) over the visible keys; -infinity for a row that sees none.</summary>
    private static double[] ReferenceLogSumExp(float[] q, float[] k, AttentionShape s, bool causal)
    {
        int group = s.HeadCount / s.EffectiveKeyValueHeads, d = s.HeadDim;
        double scale = 1 / Math.Sqrt(d);
        var lse = new double[s.BatchSize * s.HeadCount * s.QueryCount];
        var scores = new double[s.KeyCount];
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long kv = (((long)b * s.EffectiveKeyValueHeads) + (h / group)) * s.KeyCount * d;
                for (int i = 0; i < s.QueryCount; i++)
                {
                    int row = (((b * s.HeadCount) + h) * s.QueryCount) + i;
                    int visible = causal ? (int)Math.Clamp(i + 1L + s.KeyCount - s.QueryCount, 0, s.KeyCount) : s.KeyCount;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < visible; j++)
                    {
                        double dot = 0;
                        for (int t = 0; t < d; t++)
                        {
                            dot += (double)q[((long)row * d) + t] * k[kv + ((long)j * d) + t];
                        }

                        scores[j] = scale * dot;
                        max = Math.Max(max, scores[j]);
                    }

                    double sum = 0;
                    for (int j = 0; j < visible; j++)
                    {
                        sum += Math.Exp(scores[j] - max);
                    }

                    lse[row] = visible == 0 ? double.NegativeInfinity : max + Math.Log(sum);
                }
            }
        }

        return lse;
    }

    public static TheoryData<string, int, int, bool> Cases()
    {
        var data = new TheoryData<string, int, int, bool>();
        foreach ((int nq, int nk) in new[] { (1, 7), (3, 2500), (5, 3), (17, 33), (40, 9), (130, 257) })
        {
            foreach (AttentionKernel kernel in KernelsFor.Shape(nq, nk))
            {
                data.Add(kernel.Name, nq, nk, false);
                data.Add(kernel.Name, nq, nk, true);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Log_sum_exp_matches_float64_for_every_kernel_and_is_the_same_for_every_thread_count(string kernel, int nq, int nk, bool causal)
    {
        var shape = new AttentionShape(2, 4, nq, nk, 15, 7, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, nq + nk);
        float[] output = new float[shape.OutputLength], lse = new float[shape.BatchSize * shape.HeadCount * nq];
        AttentionRun run = ExactAttention.Compute(q, k, v, shape, output, lse, new ExactAttentionOptions { Kernel = kernel, Causal = causal, MaxDegreeOfParallelism = 1 });
        Assert.Equal(kernel, run.Kernel);

        double[] expected = ReferenceLogSumExp(q, k, shape, causal);
        for (int r = 0; r < lse.Length; r++)
        {
            if (double.IsNegativeInfinity(expected[r]))
            {
                Assert.True(float.IsNegativeInfinity(lse[r]), $"row {r} sees no key: lse {lse[r]}, expected -infinity");
                continue;
            }

            Assert.True(Math.Abs(lse[r] - expected[r]) <= 2e-5 * (1 + Math.Abs(expected[r])), $"row {r}: lse {lse[r]}, float64 {expected[r]}");
        }

        // The output is the same as without the log-sum-exp, and both are the same bits on three threads.
        float[] plain = new float[output.Length], threaded = new float[output.Length], lseThreaded = new float[lse.Length];
        ExactAttention.Compute(q, k, v, shape, plain, new ExactAttentionOptions { Kernel = kernel, Causal = causal, MaxDegreeOfParallelism = 1 });
        ExactAttention.Compute(q, k, v, shape, threaded, lseThreaded, new ExactAttentionOptions { Kernel = kernel, Causal = causal, MaxDegreeOfParallelism = 3 });
        Assert.Equal(plain, output);
        Assert.Equal(output, threaded);
        Assert.Equal(lse, lseThreaded);
    }

    [Theory]
    [InlineData(1, 300, 150)]
    [InlineData(3, 2500, 1000)]
    [InlineData(33, 65, 1)]
    [InlineData(20, 9, 8)]
    public void Merging_the_partials_of_two_key_halves_equals_attention_over_all_keys(int nq, int nk, int split)
    {
        var shape = new AttentionShape(1, 2, nq, nk, 8, 5);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 11);
        int d = shape.HeadDim, dv = shape.ValueDim, rows = shape.HeadCount * nq;

        // Each half of every head's keys: output rows and log-sum-exp, as partials.
        (float[] Output, float[] Lse) Half(int j0, int count)
        {
            var part = shape with { KeyCount = count };
            float[] ks = new float[part.KeyLength], vs = new float[part.ValueLength];
            for (int h = 0; h < shape.HeadCount; h++)
            {
                k.AsSpan(((h * nk) + j0) * d, count * d).CopyTo(ks.AsSpan(h * count * d));
                v.AsSpan(((h * nk) + j0) * dv, count * dv).CopyTo(vs.AsSpan(h * count * dv));
            }

            float[] o = new float[part.OutputLength], lse = new float[rows];
            ExactAttention.Compute(q, ks, vs, part, o, lse);
            return (o, lse);
        }

        (float[] o1, float[] lse1) = Half(0, split);
        (float[] o2, float[] lse2) = Half(split, nk - split);
        float[] merged = new float[shape.OutputLength];
        for (int r = 0; r < rows; r++)
        {
            Span<float> row = merged.AsSpan(r * dv, dv);
            AttentionPartial p = AttentionPartial.Merge(
                AttentionPartial.FromLogSumExp(lse1[r]), o1.AsSpan(r * dv, dv), AttentionPartial.FromLogSumExp(lse2[r]), o2.AsSpan(r * dv, dv), row);
            AttentionPartial.Normalize(p, row, row);
        }

        Tolerance.AssertExact(merged, Reference.Attention(q, k, v, shape), "merged halves");
    }

    [Fact]
    public void Merge_of_unnormalised_partials_follows_the_formula_and_treats_empty_as_identity()
    {
        // Keys with scores {1, 3} and {2}: m = 3, l = e^-2 + 1 + e^-1.
        float[] first = [(float)(Math.Exp(-2) * 10 + 20)], second = [30f], union = new float[1];
        var p = AttentionPartial.Merge(new AttentionPartial(3f, (float)(Math.Exp(-2) + 1)), first, new AttentionPartial(2f, 1f), second, union);
        Assert.Equal(3f, p.Max);
        Assert.Equal(Math.Exp(-2) + 1 + Math.Exp(-1), p.Sum, 1e-6);
        Assert.Equal((Math.Exp(-2) * 10) + 20 + (Math.Exp(-1) * 30), union[0], 1e-4);
        Assert.Equal(Math.Log(Math.Exp(1) + Math.Exp(3) + Math.Exp(2)), p.LogSumExp, 1e-6);

        float[] again = new float[1];
        Assert.Equal(p, AttentionPartial.Merge(AttentionPartial.Empty, [0f], p, union, again));
        Assert.Equal(union, again);
        Assert.Equal(float.NegativeInfinity, AttentionPartial.Empty.LogSumExp);
        Assert.Equal(AttentionPartial.Empty, AttentionPartial.FromLogSumExp(float.NegativeInfinity));
        AttentionPartial.Normalize(AttentionPartial.Empty, [5f], again);
        Assert.Equal(0f, again[0]);
        Assert.True(float.IsNaN(AttentionPartial.Merge(new AttentionPartial(float.NaN, 1f), [1f], p, union, again).Max));
    }
}
