namespace FastAttention;

/// <summary>The float64 backward passes beside the float64 forward (docs/algorithms.md §6).</summary>
public static partial class ReferenceAttention
{
    /// <summary>
    /// The gradient of exact softmax attention <c>O = softmax(s Q K^T) V</c> in double precision, from the scores up:
    /// it recomputes <c>P</c> and <c>O</c> itself (it takes no forward output), then <c>D_i = dO_i . O_i</c>,
    /// <c>dS = P o (dO V^T - D)</c>, <c>dQ = s dS K</c>, <c>dK = s dS^T Q</c>, <c>dV = P^T dO</c>; a kv head's
    /// <c>dK</c>, <c>dV</c> sum over its query heads. Layouts as in <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, the query's layout.</param>
    /// <param name="keyGradient">dK, the key's layout.</param>
    /// <param name="valueGradient">dV, the value's layout.</param>
    /// <param name="scale">Score scale; <see langword="null"/> means <c>1/sqrt(d)</c>.</param>
    /// <param name="causal">Bottom-right aligned causal mask.</param>
    public static void Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> outputGradient, AttentionShape shape,
        Span<double> queryGradient, Span<double> keyGradient, Span<double> valueGradient, double? scale = null, bool causal = false) =>
        Backward(query, key, value, outputGradient, shape, queryGradient, keyGradient, valueGradient, new BackwardSettings(scale ?? (1.0 / Math.Sqrt(shape.HeadDim)), causal, 0, default, default), Span<double>.Empty);

    /// <summary>
    /// The gradient of power attention <c>W = |s Q K^T|^p / rowsum</c>, <c>O = W V</c> in double precision:
    /// <c>dX = p W o (dO V^T - D) / X</c> (0 where <c>X = 0</c>), <c>dQ = s dX K</c>, <c>dK = s dX^T Q</c>, <c>dV = W^T dO</c>.
    /// A row whose visible weights are all zero has zero gradient.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, the query's layout.</param>
    /// <param name="keyGradient">dK, the key's layout.</param>
    /// <param name="valueGradient">dV, the value's layout.</param>
    /// <param name="power">The exponent <c>p &gt; 0</c>.</param>
    /// <param name="scale">Score scale <c>s</c>.</param>
    /// <param name="causal">Bottom-right aligned causal mask.</param>
    public static void PowerBackward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> outputGradient, AttentionShape shape,
        Span<double> queryGradient, Span<double> keyGradient, Span<double> valueGradient, double power, double scale = 1, bool causal = false)
    {
        if (!(power > 0) || !double.IsFinite(power))
        {
            throw new ArgumentOutOfRangeException(nameof(power), power, "Power must be a finite number greater than 0.");
        }

        Backward(query, key, value, outputGradient, shape, queryGradient, keyGradient, valueGradient, new BackwardSettings(scale, causal, power, default, default), Span<double>.Empty);
    }

    /// <summary>What the float64 backward computes: scale, causal, power (0 = softmax), bias and mask in <see cref="ExactAttentionOptions.Bias"/>'s broadcast layouts.</summary>
    internal readonly record struct BackwardSettings(double Scale, bool Causal, double Power, ReadOnlyMemory<float> Bias, ReadOnlyMemory<bool> Mask);

    /// <summary>The float64 backward with every option; <paramref name="biasGradient"/> (the bias's layout) receives <c>dS</c> summed over broadcast axes when not empty.</summary>
    internal static void Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> outputGradient, AttentionShape shape,
        Span<double> queryGradient, Span<double> keyGradient, Span<double> valueGradient, BackwardSettings settings, Span<double> biasGradient)
    {
        Validate.Inputs(query, key, value, shape);
        Validate.Length(outputGradient.Length, shape.OutputLength, nameof(outputGradient), Validate.OutputLayout, shape);
        Validate.Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), Validate.QueryLayout, shape);
        Validate.Length(keyGradient.Length, shape.KeyLength, nameof(keyGradient), Validate.KeyLayout, shape);
        Validate.Length(valueGradient.Length, shape.ValueLength, nameof(valueGradient), Validate.ValueLayout, shape);

        int nq = shape.QueryCount, nk = shape.KeyCount, d = shape.HeadDim, dv = shape.ValueDim;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        double s = settings.Scale, p = settings.Power;
        long block = (long)nq * nk;
        queryGradient.Clear();
        keyGradient.Clear();
        valueGradient.Clear();
        biasGradient.Clear();
        double[] x = new double[nk], w = new double[nk], o = new double[dv];
        bool[] seen = new bool[nk];
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int h = 0; h < shape.HeadCount; h++)
            {
                long kv = ((long)b * kvHeads) + (h / group);
                for (int i = 0; i < nq; i++)
                {
                    long row = ((((long)b * shape.HeadCount) + h) * nq) + i;
                    ReadOnlySpan<float> q = query.Slice((int)(row * d), d);
                    ReadOnlySpan<float> g = outputGradient.Slice((int)(row * dv), dv);
                    int visible = settings.Causal ? (int)Math.Clamp(i + 1L + nk - nq, 0, nk) : nk;

                    // Scores (log-domain weights for power attention) of the visible keys.
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < nk; j++)
                    {
                        long at = BiasIndex(settings.Mask.Length, block, shape, b, h, i, j);
                        seen[j] = j < visible && (settings.Mask.IsEmpty || settings.Mask.Span[(int)at]);
                        if (!seen[j])
                        {
                            continue;
                        }

                        double dot = 0;
                        for (int t = 0; t < d; t++)
                        {
                            dot += (double)q[t] * key[(int)((((kv * nk) + j) * d) + t)];
                        }

                        x[j] = s * dot;
                        double score = p > 0 ? (x[j] == 0 ? double.NegativeInfinity : p * Math.Log(Math.Abs(x[j])))
                            : x[j] + (settings.Bias.IsEmpty ? 0 : settings.Bias.Span[(int)BiasIndex(settings.Bias.Length, block, shape, b, h, i, j)]);
                        w[j] = score;
                        max = Math.Max(max, score);
                    }

                    if (double.IsNegativeInfinity(max))
                    {
                        continue; // no visible weight: zero output, zero gradient
                    }

                    // Weights, output, D = dO . O.
                    double sum = 0;
                    for (int j = 0; j < nk; j++)
                    {
                        w[j] = seen[j] ? Math.Exp(w[j] - max) : 0;
                        sum += w[j];
                    }

                    Array.Clear(o);
                    for (int j = 0; j < nk; j++)
                    {
                        w[j] /= sum;
                        for (int c = 0; c < dv; c++)
                        {
                            o[c] += w[j] * value[(int)((((kv * nk) + j) * dv) + c)];
                        }
                    }

                    double dotD = 0;
                    for (int c = 0; c < dv; c++)
                    {
                        dotD += g[c] * o[c];
                    }

                    // dS (or dX), then the three products.
                    for (int j = 0; j < nk; j++)
                    {
                        if (w[j] == 0)
                        {
                            continue;
                        }

                        double dp = 0;
                        for (int c = 0; c < dv; c++)
                        {
                            dp += (double)g[c] * value[(int)((((kv * nk) + j) * dv) + c)];
                            valueGradient[(int)((((kv * nk) + j) * dv) + c)] += w[j] * g[c];
                        }

                        double ds = w[j] * (dp - dotD);
                        if (p > 0)
                        {
                            ds *= p / x[j];
                        }
                        else if (!biasGradient.IsEmpty)
                        {
                            biasGradient[(int)BiasIndex(biasGradient.Length, block, shape, b, h, i, j)] += ds;
                        }

                        for (int t = 0; t < d; t++)
                        {
                            queryGradient[(int)((row * d) + t)] += s * ds * key[(int)((((kv * nk) + j) * d) + t)];
                            keyGradient[(int)((((kv * nk) + j) * d) + t)] += s * ds * q[t];
                        }
                    }
                }
            }
        }
    }

    /// <summary>The flat index of element (b, h, i, j) of a bias or mask of <paramref name="length"/> elements broadcast as <see cref="ExactAttentionOptions.Bias"/> describes.</summary>
    internal static long BiasIndex(int length, long block, AttentionShape shape, int b, int h, int i, int j)
    {
        long inBlock = ((long)i * shape.KeyCount) + j;
        return length == block ? inBlock
            : length == block * shape.HeadCount ? (h * block) + inBlock
            : (((long)b * shape.HeadCount) + h) * block + inBlock;
    }
}
