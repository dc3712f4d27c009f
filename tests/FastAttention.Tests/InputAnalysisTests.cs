using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class InputAnalysisTests
{
    /// <summary>Brute force in double: max |s q_i . k_j| over every (batch, head, i, j), grouped-query heads mapped.</summary>
    private static double BruteForceMaxScore(float[] q, float[] k, AttentionShape s, double scale)
    {
        double max = 0;
        int group = s.HeadCount / s.EffectiveKeyValueHeads;
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long qh = (((long)b * s.HeadCount) + h) * s.QueryCount * s.HeadDim;
                long kh = (((long)b * s.EffectiveKeyValueHeads) + (h / group)) * s.KeyCount * s.HeadDim;
                for (int i = 0; i < s.QueryCount; i++)
                {
                    for (int j = 0; j < s.KeyCount; j++)
                    {
                        double dot = 0;
                        for (int t = 0; t < s.HeadDim; t++)
                        {
                            dot += (double)q[qh + ((long)i * s.HeadDim) + t] * k[kh + ((long)j * s.HeadDim) + t];
                        }

                        max = Math.Max(max, Math.Abs(scale * dot));
                    }
                }
            }
        }

        return max;
    }

    [Theory]
    [InlineData(1, 1, 1, 300, 5000, 64)]   // key blocks of 4096 and a partial one
    [InlineData(2, 4, 2, 700, 333, 15)]    // grouped-query heads, query blocks of 256 and a partial one
    [InlineData(1, 2, 2, 1, 9, 1)]
    public void The_max_score_is_the_double_precision_max_over_every_pair(int batch, int heads, int kvHeads, int nq, int nk, int d)
    {
        var shape = new AttentionShape(batch, heads, nq, nk, d, d, KeyValueHeadCount: kvHeads);
        (float[] q, float[] k, _) = Data.Inputs(shape, 3);
        InputBounds bounds = InputAnalysis.Analyze(q, k, shape);
        double expected = BruteForceMaxScore(q, k, shape, 1 / Math.Sqrt(d));
        Assert.NotNull(bounds.MaxAbsScaledScore);
        Assert.Equal(expected, bounds.MaxAbsScaledScore!.Value, expected * 1e-12);
    }

    [Fact]
    public void Many_rows_tied_within_float_rounding_still_give_the_max()
    {
        // Every query is the same row, so every row ties; the largest score is then one key's, found in any row.
        var shape = new AttentionShape(1, 1, 500, 800, 32, 32);
        (float[] q, float[] k, _) = Data.Inputs(shape, 4);
        for (int i = 1; i < 500; i++)
        {
            Array.Copy(q, 0, q, i * 32, 32);
        }

        double expected = BruteForceMaxScore(q, k, shape, 1 / Math.Sqrt(32));
        Assert.Equal(expected, InputAnalysis.Analyze(q, k, shape).MaxAbsScaledScore!.Value, expected * 1e-12);
    }
}
