namespace FastAttention;

/// <summary>The power-attention forward that training calls, and its backward (docs/algorithms.md §6).</summary>
public static partial class PowerAttention
{
    /// <summary>
    /// Computes power attention into <paramref name="destination"/> and each row's <c>ln Z_i</c>, <c>Z_i = sum_j |s q_i.k_j|^p</c> over the
    /// visible keys, into <paramref name="logSumExp"/> (-infinity when <c>Z_i = 0</c>): what <see cref="Backward"/> needs.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp"><c>ln Z</c> per row, <c>[batch, heads, nq]</c>.</param>
    /// <param name="options">Exponent, scale, masking, threads.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    public static AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, Span<float> logSumExp,
        PowerAttentionOptions options = default)
    {
        Validate.Attention(query, key, value, shape, destination);
        return AttentionCore.Run(query, key, value, shape, destination, logSumExp, true, Settings(options));
    }

    /// <summary>
    /// The gradients of power attention (<c>W = |X|^p / rowsum</c>, <c>X = s Q K^T</c>, <c>O = W V</c>) with respect to Q, K and V:
    /// <c>dX = p W o (dO V^T - D) / X</c> with <c>D = rowsum(dO o O)</c> (0 where <c>X = 0</c>: for <c>p &lt; 1</c> a subgradient),
    /// <c>dQ = s dX K</c>, <c>dK = s dX^T Q</c>, <c>dV = W^T dO</c>, by the exact backward's tiled kernel (same memory, same bits for every
    /// thread count). A row with <c>Z = 0</c> has zero gradient.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp">The forward's <c>ln Z</c> per row, <c>[batch, heads, nq]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="keyGradient">dK, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="valueGradient">dV, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    /// <exception cref="ArgumentException">As <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>, or a bad exponent.</exception>
    /// <exception cref="OverflowException">The inputs are finite but a gradient is not.</exception>
    public static AttentionRun Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> logSumExp, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, PowerAttentionOptions options = default) =>
        AttentionCore.Backward(query, key, value, output, outputGradient, logSumExp, shape, queryGradient, keyGradient, valueGradient, default, false, Settings(options));
}
