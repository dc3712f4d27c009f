using System.Numerics.Tensors;

namespace FastAttention;

/// <summary>Which side of Alman–Song's bounded-entry threshold an input lies on.</summary>
public enum EntryRegime
{
    /// <summary><c>B &lt;= sqrt(ln n)</c>: the polynomial method applies (near-linear time approximations exist).</summary>
    Bounded,

    /// <summary><c>B &gt; sqrt(ln n)</c>: beyond the threshold, no truly subquadratic approximation exists in general (under SETH); use exact attention.</summary>
    Large,
}

/// <summary>Entry and score bounds of a query/key pair: what decides which attention method can work.</summary>
/// <param name="QueryEntryBound">max |Q_il|.</param>
/// <param name="KeyEntryBound">max |K_jl|.</param>
/// <param name="EntryBound">B = max of the two: the paper's entry bound.</param>
/// <param name="MaxQueryNorm">max_i ||q_i||.</param>
/// <param name="MaxKeyNorm">max_j ||k_j||.</param>
/// <param name="Scale">The score scale used.</param>
/// <param name="ScoreNormBound">s max||q|| max||k||: a cheap upper bound on |s q.k|.</param>
/// <param name="MaxAbsScaledScore">The exact max_ij |s q_i.k_j| (per head pairing), or null when skipped as too costly.</param>
/// <param name="TokenCount">n = max(nq, nk).</param>
/// <param name="Threshold">sqrt(ln n), the bounded-entry threshold.</param>
/// <param name="Regime">B against the threshold.</param>
public sealed record InputBounds(
    double QueryEntryBound,
    double KeyEntryBound,
    double EntryBound,
    double MaxQueryNorm,
    double MaxKeyNorm,
    double Scale,
    double ScoreNormBound,
    double? MaxAbsScaledScore,
    int TokenCount,
    double Threshold,
    EntryRegime Regime);

/// <summary>Measures the quantities the papers' guarantees are stated in.</summary>
public static class InputAnalysis
{
    /// <summary>The largest <c>nq nk (d + 16)</c> (summed over heads) for which the max score is computed (by the GEMM,
    /// 1.4-1.8 s at the budget on two cores, e.g. n = 65536 at d = 8 or n = 32768 at d = 128; the 16 stands for scanning each score).</summary>
    public const double ExactScoreBudget = 2e11;

    /// <summary>Measures entry bounds, norms and the max scaled score of Q and K.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="shape">The dimensions (value dimension is ignored).</param>
    /// <param name="scale">Score scale; <see langword="null"/> means <c>1/sqrt(d)</c>.</param>
    /// <returns>The bounds and the regime.</returns>
    public static InputBounds Analyze(ReadOnlySpan<float> query, ReadOnlySpan<float> key, AttentionShape shape, float? scale = null)
    {
        Validate.Shape(shape, needsValues: false);
        Validate.Length(query.Length, shape.QueryLength, nameof(query), Validate.QueryLayout, shape);
        Validate.Length(key.Length, shape.KeyLength, nameof(key), Validate.KeyLayout, shape);

        int d = shape.HeadDim;
        double s = scale ?? (1.0 / Math.Sqrt(d));
        double qBound = TensorPrimitives.MaxMagnitude(query) is var qm ? Math.Abs(qm) : 0;
        double kBound = TensorPrimitives.MaxMagnitude(key) is var km ? Math.Abs(km) : 0;
        double qNorm = MaxRowNorm(query, d), kNorm = MaxRowNorm(key, d);

        double? maxScore = null;
        double work = (double)shape.BatchSize * shape.HeadCount * shape.QueryCount * shape.KeyCount * (d + 16);
        if (work <= ExactScoreBudget)
        {
            maxScore = Math.Abs(s) * MaxAbsDot(query, key, shape, kNorm);
        }

        int n = Math.Max(shape.QueryCount, shape.KeyCount);
        double threshold = Math.Sqrt(Math.Log(Math.Max(n, 2)));
        double bound = Math.Max(qBound, kBound);
        return new InputBounds(qBound, kBound, bound, qNorm, kNorm, s, Math.Abs(s) * qNorm * kNorm, maxScore, n, threshold,
            bound <= threshold ? EntryRegime.Bounded : EntryRegime.Large);
    }

    /// <summary>max over rows of the Euclidean norm of rows of length <paramref name="d"/>, summed in double (relative error ~1e-16 d).</summary>
    internal static double MaxRowNorm(ReadOnlySpan<float> rows, int d)
    {
        double max = 0;
        for (int i = 0; i + d <= rows.Length; i += d)
        {
            double sum = 0;
            foreach (float x in rows.Slice(i, d))
            {
                sum += (double)x * x;
            }

            max = Math.Max(max, sum);
        }

        return Math.Sqrt(max);
    }

    /// <summary>
    /// max |q_i . k_j| over every (batch, head, i, j): every score by the float GEMM in blocks, then the rows whose
    /// float max comes within twice the GEMM's rounding bound (d 2^-23 ||q_i|| max||k||) of the largest are
    /// recomputed in double (at most <see cref="RefinedRows"/> of them, the largest first), so the result is the
    /// double-precision max unless more rows than that tie within the bound.
    /// </summary>
    private static double MaxAbsDot(ReadOnlySpan<float> query, ReadOnlySpan<float> key, AttentionShape shape, double maxKeyNorm)
    {
        const int QueryBlock = 256, KeyBlock = 4096;
        int d = shape.HeadDim, nq = shape.QueryCount, nk = shape.KeyCount;
        int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
        int rows = shape.BatchSize * shape.HeadCount * nq;
        float[] rowMax = new float[rows];
        float[] scores = new float[QueryBlock * Math.Min(nk, KeyBlock)];
        for (int bh = 0; bh < shape.BatchSize * shape.HeadCount; bh++)
        {
            int b = bh / shape.HeadCount, h = bh % shape.HeadCount;
            long kv = (((long)b * shape.EffectiveKeyValueHeads) + (h / group)) * nk * d;
            for (int i0 = 0; i0 < nq; i0 += QueryBlock)
            {
                int m = Math.Min(QueryBlock, nq - i0);
                ReadOnlySpan<float> q = query.Slice((int)((((long)bh * nq) + i0) * d), m * d);
                for (int j0 = 0; j0 < nk; j0 += KeyBlock)
                {
                    int width = Math.Min(KeyBlock, nk - j0);
                    Gemm.Multiply(m, width, d, q, false, key.Slice((int)(kv + ((long)j0 * d)), width * d), true, scores.AsSpan(0, m * width), 0f, 0);
                    for (int r = 0; r < m; r++)
                    {
                        int row = (bh * nq) + i0 + r;
                        rowMax[row] = Math.Max(rowMax[row], Math.Abs(TensorPrimitives.MaxMagnitude(scores.AsSpan(r * width, width))));
                    }
                }
            }
        }

        // Rounding of a float dot product of length d: at most d 2^-24 / (1 - d 2^-24) sum |q_t k_t| <= ~d 2^-24 ||q|| ||k||.
        double slack = 2 * d * Math.ScaleB(1, -23) * MaxRowNorm(query, d) * maxKeyNorm;
        float best = rowMax.Max();
        int[] candidates = [.. Enumerable.Range(0, rows).Where(r => rowMax[r] >= best - slack).OrderByDescending(r => rowMax[r]).Take(RefinedRows)];
        double[] exact = new double[candidates.Length];
        float[] q64 = query.ToArray(), k64 = key.ToArray();
        Parallel.For(0, candidates.Length, c =>
        {
            int r = candidates[c];
            int bh = r / nq;
            int b = bh / shape.HeadCount, h = bh % shape.HeadCount;
            long kv = (((long)b * shape.EffectiveKeyValueHeads) + (h / group)) * nk * d;
            double max = 0;
            for (int j = 0; j < nk; j++)
            {
                double dot = 0;
                for (int t = 0; t < d; t++)
                {
                    dot += (double)q64[((long)r * d) + t] * k64[kv + ((long)j * d) + t];
                }

                max = Math.Max(max, Math.Abs(dot));
            }

            exact[c] = max;
        });
        return exact.Max();
    }

    /// <summary>Rows whose max score <see cref="MaxAbsDot"/> recomputes in double.</summary>
    private const int RefinedRows = 64;

}
