using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>Options for <see cref="SketchedAttention"/>.</summary>
public readonly record struct SketchedAttentionOptions
{
    /// <summary>Score scale <c>s</c>; <see langword="null"/> means <c>1/sqrt(d)</c>. The weights <c>(s q.k)^4</c> are normalised per row, so s cancels.</summary>
    public float? Scale { get; init; }

    /// <summary>Sketch size m (columns of each Gaussian matrix); 0 means <see cref="SketchedAttention.DefaultSketchSize"/>. The method carries m (m + 1) / 2 features.</summary>
    public int SketchSize { get; init; }

    /// <summary>Seed of the Gaussian sketch matrices: the same seed gives the same bits on every machine and thread count.</summary>
    public long Seed { get; init; }

    /// <summary>Causal masking, bottom-right aligned as in <see cref="ExactAttentionOptions.Causal"/>.</summary>
    public bool Causal { get; init; }

    /// <summary>Worker threads; 0 means one per core.</summary>
    public int MaxDegreeOfParallelism { get; init; }
}

/// <summary>What a sketched call did. The error is statistical: see <see cref="SketchedAttention"/>.</summary>
/// <param name="SketchSize">m.</param>
/// <param name="Rank">m (m + 1) / 2 features.</param>
/// <param name="Seed">The sketch's seed.</param>
/// <param name="PredictedFlops">About r (2 (dv + 1) + 1) per query and per key, plus the sketch projections 4 m d per row.</param>
public sealed record SketchReport(int SketchSize, long Rank, long Seed, double PredictedFlops);

/// <summary>
/// Sketched polynomial attention for transformer-sized heads (PolySketchFormer, docs/algorithms.md §2): approximates
/// degree-4 polynomial attention <c>out_i = sum_j (s q_i.k_j)^4 v_j / sum_j (s q_i.k_j)^4</c> (computed exactly
/// by <see cref="PowerAttention"/> with <c>Power = 4</c>) in time linear in n. The sketch
/// <c>phi(x) = (x S1) o (x S2) / sqrt(m)</c> (Gaussian S1, S2 of d x m) has <c>E[phi(q).phi(k)] = (q.k)^2</c>;
/// its square <c>(phi(q).phi(k))^2</c> is used as the weight, which is never negative, so every output is a
/// convex combination of values. Unlike <see cref="PolynomialAttention"/> there is no per-call
/// certificate, and the error falls slowly with m: squaring an unbiased sketch biases the weights upwards by the
/// sketch's variance (about |q|^4 |k|^4 / m), so for wide heads (d = 64) and unpeaked attention the output stays close
/// to that of uniform weights unless m is of order d^2 (measured by <c>fastattn experiment sketch</c>; see
/// docs/experiments/sketch.md before relying on it).
/// </summary>
public static partial class SketchedAttention
{
    /// <summary>The sketch size used when <see cref="SketchedAttentionOptions.SketchSize"/> is 0.</summary>
    public const int DefaultSketchSize = 32;

    /// <summary>The largest sketch size accepted (m (m + 1) / 2 = 131,328 features).</summary>
    public const int MaxSketchSize = 512;

    /// <summary>Computes sketched degree-4 polynomial attention into <paramref name="destination"/>; layouts as in <see cref="ExactAttention"/>.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="options">Scale, sketch size, seed, causal.</param>
    /// <returns>The sketch size, feature count, seed and predicted flops.</returns>
    /// <exception cref="ArgumentException">Lengths, shape or non-finite inputs are invalid.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The sketch size is outside 1 .. <see cref="MaxSketchSize"/>.</exception>
    public static SketchReport Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, SketchedAttentionOptions options = default)
    {
        PolynomialAttention.CheckInputs(query, key, value, shape, destination);
        SketchFeatureMap map = Map(shape, options);
        PolynomialAttention.RunFactorised(query, key, value, shape, destination, map, map.Weights(), options.Causal, options.MaxDegreeOfParallelism);
        return Report(shape, options, map);
    }

    /// <summary>The sketch of the options (the same seed gives the same matrices); refuses a size outside 1 .. <see cref="MaxSketchSize"/>.</summary>
    internal static SketchFeatureMap Map(AttentionShape shape, SketchedAttentionOptions options)
    {
        int m = options.SketchSize == 0 ? DefaultSketchSize : options.SketchSize;
        if (m < 1 || m > MaxSketchSize)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.SketchSize, $"The sketch size must lie in 1 .. {MaxSketchSize} (it carries m (m + 1) / 2 features).");
        }

        double s = options.Scale ?? (1.0 / Math.Sqrt(shape.HeadDim));
        return new SketchFeatureMap(shape.HeadDim, m, options.Seed, s);
    }

    private static SketchReport Report(AttentionShape shape, SketchedAttentionOptions options, SketchFeatureMap map)
    {
        int m = map.SketchSize;
        double rows = (((double)shape.QueryCount * shape.HeadCount) + ((double)shape.KeyCount * shape.EffectiveKeyValueHeads)) * shape.BatchSize;
        double flops = PolynomialAttention.PredictedFlops(shape, map.Count) + (rows * 4.0 * m * shape.HeadDim);
        return new SketchReport(m, map.Count, options.Seed, flops);
    }
}
