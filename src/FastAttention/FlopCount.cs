namespace FastAttention;

/// <summary>The one flop-count convention every GFLOP/s figure (CLI, benchmarks, docs) uses.</summary>
public static class FlopCount
{
    /// <summary>
    /// Exact attention: <c>2 d</c> flops per score (<c>q.k</c>) plus <c>2 dv</c> per score (<c>P V</c>),
    /// i.e. <c>4 n^2 d</c> for one head with <c>nq = nk = n</c>, <c>dv = d</c>. Causal counts only the
    /// visible (query, key) pairs.
    /// </summary>
    public static double ExactAttention(int batch, int heads, int queryCount, int keyCount, int headDim, int valueDim, bool causal, int window = 0, int sinks = 0)
    {
        double pairs = VisiblePairs(queryCount, keyCount, causal, window, sinks);
        return 2.0 * batch * heads * pairs * (headDim + valueDim);
    }

    /// <summary>
    /// The exact (and power) attention backward: per visible (query, key) pair it recomputes the score (<c>2 d</c>), then
    /// <c>dP = dO V^T</c> (<c>2 dv</c>), <c>dV</c> (<c>2 dv</c>), <c>dQ</c> and <c>dK</c> (<c>2 d</c> each): <c>10 n^2 d</c> for one head with
    /// <c>nq = nk = n</c>, <c>dv = d</c>, 2.5 times the forward's count.
    /// </summary>
    public static double ExactAttentionBackward(int batch, int heads, int queryCount, int keyCount, int headDim, int valueDim, bool causal)
    {
        double pairs = VisiblePairs(queryCount, keyCount, causal);
        return 2.0 * batch * heads * pairs * ((3.0 * headDim) + (2.0 * valueDim));
    }

    /// <summary>
    /// (query, key) pairs a sliding window lets through (with the causal limit if asked): query i at position p = i + nk - nq sees
    /// key j when j &gt; p - window (and j &lt;= p when causal), or j &lt; sinks; window 0 is no window.
    /// </summary>
    public static double VisiblePairs(int queryCount, int keyCount, bool causal, int window, int sinks)
    {
        if (window <= 0)
        {
            return VisiblePairs(queryCount, keyCount, causal);
        }

        double total = 0;
        for (long i = 0; i < queryCount; i++)
        {
            long p = i + keyCount - queryCount;
            long last = causal ? Math.Min(p, keyCount - 1) : keyCount - 1;
            long first = Math.Max(0, p - window + 1);
            total += Math.Max(0, last - first + 1) + Math.Max(0, Math.Min(Math.Min(sinks, first), last + 1));
        }

        return total;
    }

    /// <summary>(query, key) pairs a causal (bottom-right aligned) or full mask lets through.</summary>
    public static double VisiblePairs(int queryCount, int keyCount, bool causal)
    {
        if (!causal)
        {
            return (double)queryCount * keyCount;
        }

        // Query i sees keys 0 .. i + (nk - nq), clipped to [0, nk].
        double total = 0;
        long offset = (long)keyCount - queryCount;
        for (long i = 0; i < queryCount; i++)
        {
            total += Math.Clamp(i + offset + 1, 0, keyCount);
        }

        return total;
    }

    /// <summary>
    /// Exact tensor attention of any order: <c>2 (d + dv)</c> flops per visible (query, tuple) pair, i.e. <c>4 n^3 d</c> for
    /// order 3, one head, <c>nq = nk = n</c>, <c>dv = d</c>; with causal limits and windows only the visible tuples count
    /// (<c>4 n w1 w2 d</c> for windows well inside the sequence).
    /// </summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="options">Causal and windows (the rest is ignored).</param>
    /// <returns>The flop count.</returns>
    public static double TensorAttention(TensorAttentionShape shape, TensorAttentionOptions options) =>
        2.0 * FastAttention.TensorAttention.VisibleTuples(shape, options) * (shape.HeadDim + shape.ValueDim);

    /// <summary>
    /// The backward of exact tensor attention, counted by convention as 2.5 times the forward (<c>10 n^3 d</c> for order 3), the
    /// ratio of exact attention's backward. The order-3 kernel does somewhat more (six products per (i, j1, j2): S, dP, dS K2, P V2,
    /// and the two for dK2, dV2, about <c>6 (d + dv)</c> per triple), so GFLOP/s on this count understate its arithmetic rate.
    /// </summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="options">Causal and windows (the rest is ignored).</param>
    /// <returns>The flop count.</returns>
    public static double TensorAttentionBackward(TensorAttentionShape shape, TensorAttentionOptions options) => 2.5 * TensorAttention(shape, options);
}
