namespace FastAttention;

/// <summary>
/// The slow float64 oracle every fast path is measured against: exact softmax attention with scores,
/// weights, sums and products accumulated in double, one row at a time. <c>O(nq nk (d + dv))</c>
/// time, <c>O(nk)</c> extra memory. For checking and reporting error, not for production.
/// </summary>
public static partial class ReferenceAttention
{
    /// <summary>Computes attention in double precision; layouts as in <see cref="ExactAttention"/>.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="scale">Score scale; <see langword="null"/> means <c>1/sqrt(d)</c>.</param>
    /// <param name="causal">Bottom-right aligned causal mask.</param>
    public static void Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<double> destination, double? scale = null, bool causal = false)
    {
        Validate.Attention(query, key, value, shape, destination);

        double s = scale ?? (1.0 / Math.Sqrt(shape.HeadDim));
        int n = shape.KeyCount, d = shape.HeadDim, dv = shape.ValueDim;
        int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
        double[] w = new double[n];
        double[] acc = new double[dv];
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int h = 0; h < shape.HeadCount; h++)
            {
                long kvHead = ((long)b * shape.EffectiveKeyValueHeads) + (h / group);
                ReadOnlySpan<float> k = key.Slice((int)(kvHead * n * d), n * d);
                ReadOnlySpan<float> v = value.Slice((int)(kvHead * n * dv), n * dv);
                for (int i = 0; i < shape.QueryCount; i++)
                {
                    long row = ((((long)b * shape.HeadCount) + h) * shape.QueryCount) + i;
                    ReadOnlySpan<float> q = query.Slice((int)(row * d), d);
                    Span<double> o = destination.Slice((int)(row * dv), dv);
                    int visible = causal ? (int)Math.Clamp(i + 1L + n - shape.QueryCount, 0, n) : n;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < visible; j++)
                    {
                        double dot = 0;
                        for (int t = 0; t < d; t++)
                        {
                            dot += (double)q[t] * k[(j * d) + t];
                        }

                        w[j] = s * dot;
                        max = Math.Max(max, w[j]);
                    }

                    o.Clear();
                    if (visible == 0)
                    {
                        continue;
                    }

                    double sum = 0;
                    Array.Clear(acc);
                    for (int j = 0; j < visible; j++)
                    {
                        double p = Math.Exp(w[j] - max);
                        sum += p;
                        for (int c = 0; c < dv; c++)
                        {
                            acc[c] += p * v[(j * dv) + c];
                        }
                    }

                    for (int c = 0; c < dv; c++)
                    {
                        o[c] = acc[c] / sum;
                    }
                }
            }
        }
    }
}
