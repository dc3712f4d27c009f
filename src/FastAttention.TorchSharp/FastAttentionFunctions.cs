using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>
/// Differentiable attention for TorchSharp over FastAttention's CPU kernels: exact (softmax, with PyTorch's attention mask),
/// LevAttention, order-3 tensor, polynomial and sketched attention. Each forward runs our kernel, and autograd's backward
/// runs ours from what the forward saved. Inputs must be float32 CPU tensors; contiguous ones are read and written in place
/// (no copy), others are copied once to contiguous memory.
/// </summary>
public static partial class FastAttentionFunctions
{
    /// <summary>
    /// Scaled dot-product attention with PyTorch's layout, <c>softmax(scale Q K^T + mask) V</c>, differentiable through
    /// <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>.
    /// Grouped-query attention when the key and value have fewer heads than the query (query head <c>h</c> reads key/value head
    /// <c>h / (heads / kvHeads)</c>, as PyTorch's <c>enable_gqa</c>). The causal mask is <b>bottom-right aligned</b>: query <c>i</c>
    /// sees key <c>j</c> iff <c>j &lt;= i + nk - nq</c>, which equals PyTorch's top-left <c>is_causal</c> only when <c>nq == nk</c>; a row
    /// that sees no key (through the causal limit or the mask) outputs zeros (and gets zero gradients) instead of PyTorch's NaN.
    /// <paramref name="mask"/> follows PyTorch's <c>attn_mask</c>: a bool tensor (true = the key takes part) or a float32 tensor
    /// added to the scores (-infinity hides a key), broadcastable to <c>[batch, heads, nq, nk]</c>; it combines with
    /// <paramref name="causal"/>. A float mask that tracks gradients gets its gradient (the core's <c>dBias</c>, summed back
    /// to the mask's shape). The mask is copied once, expanded to the smallest of the core's layouts that holds it.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c> (the query's rank; kvHeads divides heads), float32 on the CPU.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="mask">Optional bool or float32 CPU mask, broadcastable to <c>[batch, heads, nq, nk]</c>; NaN is an error.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal mask.</param>
    /// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32 (the mask: bool or float32), not on the CPU, of a rank other than 2 to 4
    /// (the mask: at most 4) or of inconsistent, unbroadcastable or empty shape (the message names it).</exception>
    public static Tensor ScaledDotProductAttention(Tensor query, Tensor key, Tensor value, Tensor? mask = null, bool causal = false, double? scale = null)
    {
        var (q, k, v) = Inputs(query, key, value, scale);
        var (boolMask, bias) = AttentionMask.Prepare(mask, q, k);
        var options = new ExactAttentionOptions { Causal = causal, Scale = (float?)scale, Mask = boolMask, MaxDegreeOfParallelism = TorchRuntime.KernelThreads };
        return TensorViews.AtRank(ExactAttentionFunction.apply(q, k, v, bias!, options), query.dim());
    }

    /// <summary>
    /// LevAttention (docs/algorithms.md §4) with PyTorch's layout, differentiable through
    /// <see cref="global::FastAttention.LevAttention.Backward"/>: per (batch, kv head) the keys are selected on this call's keys
    /// (by leverage scores, or by p-sensitivity bounds when <paramref name="power"/> &gt; 0), the top <paramref name="top"/> or the
    /// universal set at <paramref name="eps"/>, plus the always-kept first and last keys, and each query attends to the kept keys
    /// only (no causal mask). The selection is a discrete choice and carries no gradient: the backward holds it fixed, the key
    /// and value gradients are zero outside it, and how the keys influence which keys are kept is not part of the gradient.
    /// Grouped-query heads share their kv head's selection. A non-finite gradient reaching the backward gives NaN gradients.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c> (the query's rank; kvHeads divides heads), float32 on the CPU.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="top">Keep the k keys with the largest scores; exactly one of <paramref name="top"/> and <paramref name="eps"/> must be set.</param>
    /// <param name="eps">Keep the universal set <c>{j : sigma_j &gt;= eps}</c>.</param>
    /// <param name="power">0: softmax over the kept keys; p in (0, 4): power attention <c>|s q.k|^p</c>.</param>
    /// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
    /// <param name="keepFirst">Always keep the first this many keys (attention sinks; a ViT's CLS token).</param>
    /// <param name="keepLast">Always keep the last this many keys.</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32, not on the CPU, of a rank other than 2 to 4 or of inconsistent or empty shape, or bad
    /// selection options (the message names the argument).</exception>
    public static Tensor LevAttention(Tensor query, Tensor key, Tensor value, int? top = null, double? eps = null, double power = 0, double? scale = null,
        int keepFirst = 0, int keepLast = 0)
    {
        var (q, k, v) = Inputs(query, key, value, scale);
        var options = new LevAttentionOptions { Top = top, Eps = eps, Power = power, Scale = (float?)scale, KeepFirst = keepFirst, KeepLast = keepLast, MaxDegreeOfParallelism = TorchRuntime.KernelThreads };
        return TensorViews.AtRank(LevAttentionFunction.apply(q, k, v, options), query.dim());
    }

    /// <summary>Checks the inputs and the scale and views the tensors as <c>[batch, heads, n, d]</c>.</summary>
    private static (Tensor Query, Tensor Key, Tensor Value) Inputs(Tensor query, Tensor key, Tensor value, double? scale)
    {
        var lifted = Inputs([(query, nameof(query)), (key, nameof(key)), (value, nameof(value))], scale);
        return (lifted[0], lifted[1], lifted[2]);
    }

    /// <summary>Checks float32 CPU tensors of one rank (the first is the query) and a finite scale; views them as <c>[batch, heads, n, d]</c>.</summary>
    private static Tensor[] Inputs(ReadOnlySpan<(Tensor Tensor, string Name)> tensors, double? scale)
    {
        var lifted = TensorViews.AsFourDimensional(tensors);
        if (scale is { } s && !double.IsFinite(s))
        {
            throw new ArgumentException($"scale must be finite, not {s}.", nameof(scale));
        }

        return lifted;
    }
}
