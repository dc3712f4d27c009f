using System.Numerics.Tensors;

namespace FastAttention.Leverage;

/// <summary>How leverage scores are computed.</summary>
public enum LeverageMethod
{
    /// <summary>Gram matrix and scores in double (pivoted Cholesky, pseudo-inverse semantics): the accurate default.</summary>
    Exact,

    /// <summary>Gram matrix and scores by the project's float32 GEMM (two GEMM-shaped passes), chunks summed in double: for very large n.</summary>
    Fast,

    /// <summary>CountSketch of K (4 d^2 rows) for R, a Gaussian JL projection (t = 32 columns) for the scores: O(n d t), constant-factor accurate.</summary>
    Sketched,
}

/// <summary>
/// Leverage scores <c>tau_j = k_j^T (K^T K)^+ k_j</c> of the rows of K (<c>[n, d]</c>): in [0, 1], summing to rank K
/// (docs/algorithms.md §4). For p = 2 attention <c>A_ij = (q_i.k_j)^2 / sum_l (q_i.k_l)^2</c>, <c>A_ij &lt;= tau_j</c> for every
/// query, which makes <c>{j : tau_j &gt;= eps}</c> a universal set (<see cref="Leverage.UniversalSet"/>).
/// </summary>
public static class LeverageScores
{
    /// <summary>Columns of the sketched method's Gaussian projection.</summary>
    public const int SketchColumns = 32;

    /// <summary>Computes the leverage scores of the rows of <paramref name="keys"/>.</summary>
    /// <param name="keys">K, row-major <c>[n, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="method">Exact (default), fast (float GEMM) or sketched.</param>
    /// <param name="seed">The sketched method's seed.</param>
    /// <param name="maxDegreeOfParallelism">Threads; 0 means one per core. The result bits do not depend on it.</param>
    /// <returns>tau, length n.</returns>
    /// <exception cref="ArgumentException">d &lt; 1, a length that is not a multiple of d, or non-finite entries.</exception>
    public static double[] Compute(ReadOnlySpan<float> keys, int dimension, LeverageMethod method = LeverageMethod.Exact, int seed = 0, int maxDegreeOfParallelism = 0)
    {
        Check(keys, dimension, nameof(keys));
        return method switch
        {
            LeverageMethod.Fast => Fast(keys, dimension, maxDegreeOfParallelism),
            LeverageMethod.Sketched => Sketched(keys, dimension, seed, maxDegreeOfParallelism),
            _ => Scores(keys, Gram(keys, dimension, maxDegreeOfParallelism).Factor(), maxDegreeOfParallelism),
        };
    }

    /// <summary>The Gram state of K in double: fixed chunks in parallel, merged in chunk order.</summary>
    /// <param name="keys">K, <c>[n, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <param name="weights">Optional row weights.</param>
    /// <returns>The state.</returns>
    public static unsafe GramState Gram(ReadOnlySpan<float> keys, int dimension, int maxDegreeOfParallelism = 0, ReadOnlySpan<double> weights = default)
    {
        Check(keys, dimension, nameof(keys));
        const int Chunk = 2048;
        int n = keys.Length / dimension;
        int chunks = (n + Chunk - 1) / Chunk;
        var parts = new GramState[chunks];
        bool weighted = !weights.IsEmpty;
        fixed (float* pk = keys)
        fixed (double* pw = weights)
        {
            // The spans are pinned and passed as pointers: copying a large K first cost more than the Gram itself.
            nint k = (nint)pk, w = (nint)pw;
            Parallel.For(0, chunks, Options(maxDegreeOfParallelism), c =>
            {
                int first = c * Chunk, count = Math.Min(Chunk, n - first);
                double[] g = LeverageProducts.Gram((float*)k + ((long)first * dimension), dimension, count, weighted ? (double*)w + first : null);
                parts[c] = GramState.Of(dimension, g, count);
            });
        }

        // Fixed chunks merged in chunk order: the same bits for any thread count.
        var total = new GramState(dimension);
        foreach (GramState part in parts)
        {
            total.Merge(part);
        }

        return total;
    }

    /// <summary>Scores of rows against a factor (<c>||k W||^2</c>, clamped to [0, 1]), rows in parallel.</summary>
    /// <param name="keys">Rows, <c>[n, d]</c>.</param>
    /// <param name="factor">The factor of the Gram matrix the scores are relative to.</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <param name="clamp">Clamp to [0, 1] (scores of K's own rows against K's Gram matrix lie there up to rounding).</param>
    /// <returns>One score per row.</returns>
    public static unsafe double[] Scores(ReadOnlySpan<float> keys, GramFactor factor, int maxDegreeOfParallelism = 0, bool clamp = true)
    {
        ArgumentNullException.ThrowIfNull(factor);
        int d = factor.Dimension, r = factor.Rank, n = keys.Length / d;
        double[] scores = new double[n];
        if (r == 0)
        {
            return scores;
        }

        double[] w = LeverageProducts.PadProjection(factor.Whitening, d, r);
        fixed (float* pk = keys)
        {
            nint k = (nint)pk;
            Parallel.For(0, (n + 1023) / 1024, Options(maxDegreeOfParallelism), block =>
            {
                int first = block * 1024, count = Math.Min(1024, n - first);
                Span<double> target = scores.AsSpan(first, count);
                LeverageProducts.Scores((float*)k + ((long)first * d), d, count, w, r, target, clamp);
            });
        }

        return scores;
    }

    /// <summary>Gram by float GEMM, then <c>Y = K W</c> by float GEMM in chunks, scores = row norms of Y.</summary>
    private static double[] Fast(ReadOnlySpan<float> keys, int d, int maxDegreeOfParallelism)
    {
        var gram = new GramState(d);
        gram.AddFast(keys, maxDegreeOfParallelism);
        GramFactor factor = gram.Factor(1e-6); // float entries: rank decided at float precision
        int r = factor.Rank, n = keys.Length / d;
        double[] scores = new double[n];
        if (r == 0)
        {
            return scores;
        }

        ProjectedNorms(keys, d, Array.ConvertAll(factor.Whitening, x => (float)x), r, scores, maxDegreeOfParallelism);
        return scores;
    }

    /// <summary>
    /// scores[j] = ||k_j P||^2 clamped to [0, 1], with <c>Y = K P</c> (P is d x width) on the project's GEMM in chunks of
    /// 65,536 rows, so Y never holds more than one chunk.
    /// </summary>
    private static unsafe void ProjectedNorms(ReadOnlySpan<float> keys, int d, float[] projection, int width, double[] scores, int maxDegreeOfParallelism)
    {
        const int Chunk = 65536;
        int n = keys.Length / d;
        float[] y = new float[(long)Math.Min(Chunk, n) * width];
        fixed (float* k = keys, pp = projection, py = y)
        {
            for (int first = 0; first < n; first += Chunk)
            {
                int m = Math.Min(Chunk, n - first);
                Gemm.Multiply(m, width, d, k + ((long)first * d), false, pp, false, py, 0f, maxDegreeOfParallelism);
                for (int j = 0; j < m; j++)
                {
                    var row = new ReadOnlySpan<float>(py + ((long)j * width), width);
                    scores[first + j] = Math.Clamp(TensorPrimitives.Dot(row, row), 0, 1);
                }
            }
        }
    }

    /// <summary>
    /// R from a CountSketch S K (4 d^2 rows; each key added to one bucket with a random sign), then
    /// <c>tau_j ~ ||k_j R^+ G||^2</c> with G a d x t Gaussian / sqrt(t): a (1 +- eps) subspace embedding times a JL
    /// estimate. Seeded; the same bits for any thread count.
    /// </summary>
    private static unsafe double[] Sketched(ReadOnlySpan<float> keys, int d, int seed, int maxDegreeOfParallelism)
    {
        int n = keys.Length / d;
        int buckets = Math.Max(4 * d * d, 1);

        // CountSketch: key j goes to bucket h(j) with sign s(j), both from a seeded hash of j, so fixed chunks of keys
        // can be sketched in parallel and their sketches added in chunk order (the same bits for any thread count).
        const int Chunk = 65536;
        int chunks = (n + Chunk - 1) / Chunk;
        float[] sketch = new float[(long)buckets * d];
        fixed (float* pinned = keys)
        {
            nint copy = (nint)pinned;
            int threads = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : Environment.ProcessorCount;
            for (int c0 = 0; c0 < chunks; c0 += threads)
            {
                int items = Math.Min(threads, chunks - c0);
                float[][] partial = new float[items][];
                Parallel.For(0, items, Options(maxDegreeOfParallelism), item =>
                {
                    float[] part = new float[(long)buckets * d];
                    int first = (c0 + item) * Chunk;
                    fixed (float* pp = part)
                    {
                        float* pk = (float*)copy;
                        for (int j = first; j < Math.Min(n, first + Chunk); j++)
                        {
                            ulong h = Mix((ulong)j ^ ((ulong)(uint)seed << 32));
                            int bucket = (int)(((h & 0xFFFFFFFFUL) * (ulong)buckets) >> 32); // multiply-shift: uniform in [0, buckets)
                            float* target = pp + ((long)bucket * d), source = pk + ((long)j * d);
                            if ((h >> 63) == 0)
                            {
                                for (int l = 0; l < d; l++)
                                {
                                    target[l] += source[l];
                                }
                            }
                            else
                            {
                                for (int l = 0; l < d; l++)
                                {
                                    target[l] -= source[l];
                                }
                            }
                        }
                    }

                    partial[item] = part;
                });

                foreach (float[] part in partial)
                {
                    TensorPrimitives.Add(sketch, part, sketch);
                }
            }
        }

        GramFactor factor = Gram(sketch, d, maxDegreeOfParallelism).Factor();
        int r = factor.Rank;
        double[] scores = new double[n];
        if (r == 0)
        {
            return scores;
        }

        // Projection P = W G (d x t), G Gaussian / sqrt(t): scores = ||k P||^2, by the float GEMM in chunks.
        const int T = SketchColumns;
        var random = new Random(seed);
        double[] g = new double[r * T];
        SeededGaussian.Fill(random, g);
        TensorPrimitives.Divide(g, Math.Sqrt(T), g);

        float[] projection = new float[d * T];
        for (int l = 0; l < d; l++)
        {
            for (int t = 0; t < T; t++)
            {
                double sum = 0;
                for (int c = 0; c < r; c++)
                {
                    sum += factor.Whitening[(l * r) + c] * g[(c * T) + t];
                }

                projection[(l * T) + t] = (float)sum;
            }
        }

        ProjectedNorms(keys, d, projection, T, scores, maxDegreeOfParallelism);
        return scores;
    }

    /// <summary>SplitMix64's finaliser: a well-mixed 64-bit hash.</summary>
    private static ulong Mix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    internal static void Check(ReadOnlySpan<float> keys, int dimension, string name)
    {
        if (dimension < 1)
        {
            throw new ArgumentOutOfRangeException(name, dimension, "The row length d must be at least 1.");
        }

        if (keys.Length % dimension != 0)
        {
            throw new ArgumentException($"The keys' length {keys.Length} is not a multiple of d = {dimension}.", name);
        }

        FiniteCheck.Require(keys, name, dimension, "Leverage scores need finite keys.");
    }

    private static ParallelOptions Options(int maxDegreeOfParallelism) => new() { MaxDegreeOfParallelism = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : -1 };
}
