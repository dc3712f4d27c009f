namespace FastAttention;

/// <summary>The backward pass beside the forward (docs/algorithms.md §6).</summary>
public static partial class ExactAttention
{
    /// <summary>
    /// The gradients of <c>O = softmax(s Q K^T + bias) V</c> with respect to Q, K and V, given <c>dO</c>, by FlashAttention-2's
    /// algorithm: the forward's per-row log-sum-exp recomputes <c>P</c> tile by tile (no <c>nq x nk</c> buffer; extra memory
    /// O(n d) per work item), <c>D = rowsum(dO o O)</c>, <c>dS = P o (dO V^T - D)</c>, <c>dQ = s dS K</c>, <c>dK = s dS^T Q</c>,
    /// <c>dV = P^T dO</c>. A kv head's <c>dK</c>, <c>dV</c> sum over its query heads (grouped-query attention); a row that saw
    /// no key (log-sum-exp -infinity) contributes nothing. The same options as the forward (scale, causal, bias, mask, kernel);
    /// the gradients' bits are the same for every thread count. Bias and mask carry no gradient here: see the overload with
    /// <c>biasGradient</c>.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output O, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dO, the loss's gradient with respect to O, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp">The forward's log-sum-exp per row (from <see cref="Compute(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, ExactAttentionOptions)"/>), <c>[batch, heads, nq]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="keyGradient">dK, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="valueGradient">dV, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>The kernel that ran and the flops counted (<see cref="FlopCount.ExactAttentionBackward"/>).</returns>
    /// <exception cref="ArgumentException">A length, shape or option is invalid, a gradient overlaps an input or another gradient, or (by default) an input,
    /// <paramref name="outputGradient"/> included, is not finite; the message names it. Everything is checked before any work.</exception>
    /// <exception cref="OverflowException">The inputs are finite but a gradient is not (not thrown with <see cref="ExactAttentionOptions.AllowNonFinite"/>).</exception>
    public static AttentionRun Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> logSumExp, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, ExactAttentionOptions options = default) =>
        AttentionCore.Backward(query, key, value, output, outputGradient, logSumExp, shape, queryGradient, keyGradient, valueGradient, default, false, Settings(options));

    /// <summary>
    /// As the overload without <paramref name="biasGradient"/>, and also the gradient with respect to the additive bias,
    /// <c>dBias = dS</c> summed over the axes the bias broadcasts along (its layout: <c>[nq, nk]</c>, <c>[heads, nq, nk]</c> or
    /// <c>[batch, heads, nq, nk]</c>; with no bias, the layout <paramref name="biasGradient"/>'s length names). Masked and
    /// causally hidden entries get 0. A broadcast layout needs a <c>[batch, heads, nq, nk]</c> float scratch.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output O, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp">The forward's log-sum-exp per row, <c>[batch, heads, nq]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="keyGradient">dK, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="valueGradient">dV, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="biasGradient">dBias, the bias's layout.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    /// <exception cref="ArgumentException">As the overload without <paramref name="biasGradient"/>, or its length is not the bias's.</exception>
    /// <exception cref="OverflowException">As the overload without <paramref name="biasGradient"/>.</exception>
    public static AttentionRun Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> logSumExp, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, Span<float> biasGradient,
        ExactAttentionOptions options) =>
        AttentionCore.Backward(query, key, value, output, outputGradient, logSumExp, shape, queryGradient, keyGradient, valueGradient, biasGradient, true, Settings(options));
}
