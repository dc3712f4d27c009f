namespace FastAttention.Tests.Support;

/// <summary>
/// The slow, obviously-correct oracle: attention with every score, weight and sum in double.
/// Materialises one row of scores at a time; no tiling, no tricks.
/// </summary>
internal static class Reference
{
    public sealed record Options(
        double? Scale = null,
        bool Causal = false,
        float[]? Bias = null,
        bool[]? Mask = null,
        double Power = 0);

    public static double[] Attention(float[] q, float[] k, float[] v, AttentionShape s, Options? options = null)
    {
        options ??= new Options();
        int kvHeads = s.EffectiveKeyValueHeads;
        int group = s.HeadCount / kvHeads;
        double scale = options.Scale ?? (options.Power > 0 ? 1.0 : 1.0 / Math.Sqrt(s.HeadDim));
        long block = (long)s.QueryCount * s.KeyCount;
        var output = new double[s.OutputLength];
        var weights = new double[s.KeyCount];
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                int hk = h / group;
                long qBase = (((long)b * s.HeadCount) + h) * s.QueryCount * s.HeadDim;
                long kBase = (((long)b * kvHeads) + hk) * s.KeyCount * s.HeadDim;
                long vBase = (((long)b * kvHeads) + hk) * s.KeyCount * s.ValueDim;
                long oBase = (((long)b * s.HeadCount) + h) * s.QueryCount * s.ValueDim;
                for (int i = 0; i < s.QueryCount; i++)
                {
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < s.KeyCount; j++)
                    {
                        double dot = 0;
                        for (int t = 0; t < s.HeadDim; t++)
                        {
                            dot += (double)q[qBase + ((long)i * s.HeadDim) + t] * k[kBase + ((long)j * s.HeadDim) + t];
                        }

                        double score = options.Power > 0
                            ? (dot == 0 ? double.NegativeInfinity : options.Power * Math.Log(Math.Abs(scale * dot)))
                            : scale * dot;
                        long at = ((long)i * s.KeyCount) + j;
                        if (options.Bias is not null)
                        {
                            score += options.Bias[Broadcast(options.Bias.Length, block, s, b, h) + at];
                        }

                        if (options.Mask is not null && !options.Mask[Broadcast(options.Mask.Length, block, s, b, h) + at])
                        {
                            score = double.NegativeInfinity;
                        }

                        if (options.Causal && j > i + (s.KeyCount - s.QueryCount))
                        {
                            score = double.NegativeInfinity;
                        }

                        weights[j] = score;
                        max = Math.Max(max, score);
                    }

                    if (double.IsNegativeInfinity(max))
                    {
                        continue; // no visible key: zeros
                    }

                    double sum = 0;
                    for (int j = 0; j < s.KeyCount; j++)
                    {
                        weights[j] = Math.Exp(weights[j] - max);
                        sum += weights[j];
                    }

                    for (int c = 0; c < s.ValueDim; c++)
                    {
                        double acc = 0;
                        for (int j = 0; j < s.KeyCount; j++)
                        {
                            acc += weights[j] * v[vBase + ((long)j * s.ValueDim) + c];
                        }

                        output[oBase + ((long)i * s.ValueDim) + c] = acc / sum;
                    }
                }
            }
        }

        return output;
    }

    /// <summary>
    /// A naive float32 kernel (scores, exp and sums in float, two passes over a full row):
    /// the yardstick for "no worse than twice a naive fp32 kernel's error".
    /// </summary>
    public static float[] NaiveFloat(float[] q, float[] k, float[] v, AttentionShape s, bool causal = false)
    {
        int group = s.HeadCount / s.EffectiveKeyValueHeads;
        float scale = 1f / MathF.Sqrt(s.HeadDim);
        var output = new float[s.OutputLength];
        var w = new float[s.KeyCount];
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long qBase = (((long)b * s.HeadCount) + h) * s.QueryCount * s.HeadDim;
                long kBase = (((long)b * s.EffectiveKeyValueHeads) + (h / group)) * s.KeyCount * s.HeadDim;
                long vBase = (((long)b * s.EffectiveKeyValueHeads) + (h / group)) * s.KeyCount * s.ValueDim;
                long oBase = (((long)b * s.HeadCount) + h) * s.QueryCount * s.ValueDim;
                for (int i = 0; i < s.QueryCount; i++)
                {
                    float max = float.NegativeInfinity;
                    for (int j = 0; j < s.KeyCount; j++)
                    {
                        float dot = 0;
                        for (int t = 0; t < s.HeadDim; t++)
                        {
                            dot += q[qBase + ((long)i * s.HeadDim) + t] * k[kBase + ((long)j * s.HeadDim) + t];
                        }

                        w[j] = causal && j > i + (s.KeyCount - s.QueryCount) ? float.NegativeInfinity : dot * scale;
                        max = MathF.Max(max, w[j]);
                    }

                    if (float.IsNegativeInfinity(max))
                    {
                        continue;
                    }

                    float sum = 0;
                    for (int j = 0; j < s.KeyCount; j++)
                    {
                        w[j] = MathF.Exp(w[j] - max);
                        sum += w[j];
                    }

                    for (int c = 0; c < s.ValueDim; c++)
                    {
                        float acc = 0;
                        for (int j = 0; j < s.KeyCount; j++)
                        {
                            acc += w[j] * v[vBase + ((long)j * s.ValueDim) + c];
                        }

                        output[oBase + ((long)i * s.ValueDim) + c] = acc / sum;
                    }
                }
            }
        }

        return output;
    }

    private static long Broadcast(int length, long block, AttentionShape s, int b, int h) =>
        length == block ? 0 : length == block * s.HeadCount ? h * block : ((b * s.HeadCount) + h) * block;
}
