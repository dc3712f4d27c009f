using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>The sketched method's backward (docs/algorithms.md §2.8).</summary>
public static partial class SketchedAttention
{
    /// <summary>
    /// The gradients of the sketched attention <see cref="Compute"/> computes with the same <paramref name="options"/>
    /// (the same seed gives the same sketch): the factorised backward of <see cref="PolynomialAttention.Backward"/> with the
    /// chain rule through <c>phi(x) = (x S1) o (x S2)</c> and its squared features; the sketch matrices are fixed, not trained.
    /// Non-causal and causal; grouped-query heads sum into their kv head; bits independent of the thread count.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output for these inputs and options, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dL/d output, <c>[batch, heads, nq, dv]</c>; must be finite.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dL/dQ, <c>[batch, heads, nq, d]</c>, written.</param>
    /// <param name="keyGradient">dL/dK, <c>[batch, kvHeads, nk, d]</c>, written.</param>
    /// <param name="valueGradient">dL/dV, <c>[batch, kvHeads, nk, dv]</c>, written.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>The forward's report: sketch size, feature count, seed, predicted flops of the forward.</returns>
    /// <exception cref="ArgumentException">Lengths, shape, overlapping buffers, or non-finite inputs or output gradient.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The sketch size is outside 1 .. <see cref="MaxSketchSize"/>.</exception>
    public static SketchReport Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient,
        SketchedAttentionOptions options = default)
    {
        PolynomialAttention.CheckBackward(query, key, value, output, outputGradient, shape, queryGradient, keyGradient, valueGradient);
        SketchFeatureMap map = Map(shape, options);
        PolynomialAttention.RunFactorisedBackward(query, key, value, output, outputGradient, shape, queryGradient, keyGradient, valueGradient,
            map, map.Weights(), options.Causal, options.MaxDegreeOfParallelism);
        return Report(shape, options, map);
    }
}
