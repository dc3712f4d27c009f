using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>
/// Differentiable attention for TorchSharp over FastAttention's CPU kernels: the forward runs our kernel, and autograd's
/// backward runs ours from the saved output and log-sum-exp. Inputs must be float32 CPU tensors; contiguous ones are read
/// and written in place (no copy), others are copied once to contiguous memory.
/// </summary>
public static class FastAttentionFunctions
{
    /// <summary>
    /// Scaled dot-product attention with PyTorch's layout, <c>softmax(scale Q K^T) V</c>, differentiable through
    /// <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>.
    /// Grouped-query attention when the key and value have fewer heads than the query (query head <c>h</c> reads key/value head
    /// <c>h / (heads / kvHeads)</c>, as PyTorch's <c>enable_gqa</c>). The causal mask is <b>bottom-right aligned</b>: query <c>i</c>
    /// sees key <c>j</c> iff <c>j &lt;= i + nk - nq</c>, which equals PyTorch's top-left <c>is_causal</c> only when <c>nq == nk</c>; a row
    /// that sees no key outputs zeros (and gets zero gradients) instead of NaN.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c> (the query's rank; kvHeads divides heads), float32 on the CPU.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal mask.</param>
    /// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32, not on the CPU, of a rank other than 2 to 4 or of inconsistent shape (the message names it).</exception>
    public static Tensor ScaledDotProductAttention(Tensor query, Tensor key, Tensor value, bool causal = false, double? scale = null)
    {
        TensorViews.RequireFloat32Cpu(query, nameof(query));
        TensorViews.RequireFloat32Cpu(key, nameof(key));
        TensorViews.RequireFloat32Cpu(value, nameof(value));
        if (scale is { } s && !double.IsFinite(s))
        {
            throw new ArgumentException($"scale must be finite, not {s}.", nameof(scale));
        }

        long rank = query.dim();
        var (q, k, v) = TensorViews.AsFourDimensional(query, key, value);
        var options = new ExactAttentionOptions { Causal = causal, Scale = scale is null ? null : (float)scale.Value };
        var output = ExactAttentionFunction.apply(q, k, v, options);
        return rank switch
        {
            2 => output.squeeze(0).squeeze(0),
            3 => output.squeeze(0),
            _ => output,
        };
    }
}
