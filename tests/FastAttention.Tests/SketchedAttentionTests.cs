using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 4, deliverable 4: PolySketchFormer-style sketched degree-4 attention.</summary>
public class SketchedAttentionTests
{
    private static float[] Gaussian(long count, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, (int)count).Select(_ => (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble())))];
    }

    [Theory]
    [InlineData(false, 37, 53)]
    [InlineData(true, 300, 300)]
    [InlineData(true, 150, 410)]
    [InlineData(true, 410, 150)]
    public void Factorised_result_equals_brute_force_sketch_weights(bool causal, int nq, int nk)
    {
        var shape = new AttentionShape(1, 2, nq, nk, 6, 3, KeyValueHeadCount: 1);
        float[] q = Gaussian(shape.QueryLength, 1), k = Gaussian(shape.KeyLength, 2), v = Gaussian(shape.ValueLength, 3);
        var output = new float[shape.OutputLength];
        var options = new SketchedAttentionOptions { SketchSize = 8, Seed = 42, Causal = causal, Scale = 0.5f };
        SketchReport report = SketchedAttention.Compute(q, k, v, shape, output, options);
        Assert.Equal(36, report.Rank);

        var map = new SketchFeatureMap(6, 8, 42, 0.5);
        for (int h = 0; h < 2; h++)
        {
            for (int i = 0; i < nq; i++)
            {
                int visible = causal ? Math.Clamp(i + 1 + nk - nq, 0, nk) : nk;
                double[] acc = new double[3];
                double sum = 0;
                for (int j = 0; j < visible; j++)
                {
                    double w = map.Weight(q.AsSpan(((h * nq) + i) * 6, 6), k.AsSpan(j * 6, 6));
                    Assert.True(w >= 0);
                    sum += w;
                    for (int c = 0; c < 3; c++)
                    {
                        acc[c] += w * v[(j * 3) + c];
                    }
                }

                for (int c = 0; c < 3; c++)
                {
                    double expected = visible == 0 || sum == 0 ? 0 : acc[c] / sum;
                    Assert.Equal(expected, output[(((h * nq) + i) * 3) + c], 1e-5);
                }
            }
        }
    }

    [Fact]
    public void Error_against_exact_degree_4_attention_falls_as_the_sketch_grows()
    {
        var shape = new AttentionShape(1, 1, 200, 300, 16, 4);
        float[] q = Gaussian(shape.QueryLength, 11), k = Gaussian(shape.KeyLength, 12), v = Gaussian(shape.ValueLength, 13);
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.25, Power: 4));
        double Error(int m)
        {
            double total = 0;
            for (int seed = 0; seed < 4; seed++)
            {
                var output = new float[shape.OutputLength];
                SketchedAttention.Compute(q, k, v, shape, output, new SketchedAttentionOptions { SketchSize = m, Seed = seed, Scale = 0.25f });
                total += output.Select((x, i) => Math.Abs(x - exact[i])).Average(); // mean: the sketch's error is statistical
            }

            return total / 4;
        }

        double e4 = Error(4), e32 = Error(32), e256 = Error(256);
        Assert.True(e32 < e4 && e256 < e32, $"errors {e4:E3}, {e32:E3}, {e256:E3} should fall with m");
        Assert.True(e256 < 0.5 * e4, $"errors {e4:E3}, {e32:E3}, {e256:E3}");
    }

    [Fact]
    public void Same_seed_same_bits_for_any_thread_count_and_outputs_are_convex_combinations()
    {
        var shape = new AttentionShape(1, 2, 700, 1500, 8, 2);
        float[] q = Gaussian(shape.QueryLength, 21), k = Gaussian(shape.KeyLength, 22), v = Gaussian(shape.ValueLength, 23);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        var other = new float[shape.OutputLength];
        SketchedAttention.Compute(q, k, v, shape, one, new SketchedAttentionOptions { Seed = 7, MaxDegreeOfParallelism = 1 });
        SketchedAttention.Compute(q, k, v, shape, two, new SketchedAttentionOptions { Seed = 7, MaxDegreeOfParallelism = 2 });
        SketchedAttention.Compute(q, k, v, shape, other, new SketchedAttentionOptions { Seed = 8 });
        Assert.Equal(one, two);
        Assert.NotEqual(one, other);

        // Non-negative weights: each output column lies within the values' range.
        for (int h = 0; h < 2; h++)
        {
            for (int c = 0; c < 2; c++)
            {
                float lo = float.MaxValue, hi = float.MinValue;
                for (int j = 0; j < 1500; j++)
                {
                    float x = v[(((h * 1500) + j) * 2) + c];
                    lo = Math.Min(lo, x);
                    hi = Math.Max(hi, x);
                }

                for (int i = 0; i < 700; i++)
                {
                    Assert.InRange(one[(((h * 700) + i) * 2) + c], lo - 1e-5f, hi + 1e-5f);
                }
            }
        }
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(513)]
    public void Sketch_size_out_of_range_is_a_clear_error(int m)
    {
        var shape = AttentionShape.SingleHead(4, 2);
        float[] x = Gaussian(8, 1);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => SketchedAttention.Compute(x, x, x, shape, new float[8], new SketchedAttentionOptions { SketchSize = m }));
        Assert.Contains("sketch size", ex.Message);
    }
}
