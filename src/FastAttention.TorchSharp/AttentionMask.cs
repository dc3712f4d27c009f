using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>
/// PyTorch's <c>attn_mask</c> mapped to the core's <see cref="ExactAttentionOptions.Mask"/> and <see cref="ExactAttentionOptions.Bias"/>:
/// a bool mask (true = take part) or a float32 mask added to the scores, broadcastable to <c>[batch, heads, nq, nk]</c>. The
/// core takes <c>[nq, nk]</c>, <c>[heads, nq, nk]</c> or <c>[batch, heads, nq, nk]</c>; the mask is expanded in torch to the
/// smallest of these that holds it, so a float mask's gradient (the core's <c>dBias</c> in that layout) is summed back to the
/// mask's own shape by torch's autograd of the expansion.
/// </summary>
internal static class AttentionMask
{
    /// <summary>
    /// The mask for <c>[batch, heads, nq, d]</c> <paramref name="query"/> and <c>[batch, kvHeads, nk, d]</c> <paramref name="key"/>:
    /// a bool mask as the core's array (one copy), or a float mask as a tensor in the core's layout (still tracking gradients).
    /// </summary>
    /// <exception cref="ArgumentException">The mask is not bool or float32, not on the CPU, of rank above 4, not broadcastable, or holds NaN (naming <c>mask</c>).</exception>
    public static (bool[]? Mask, Tensor? Bias) Prepare(Tensor? mask, Tensor query, Tensor key)
    {
        if (mask is null)
        {
            return (null, null);
        }

        const string name = "mask";
        if (mask.dtype != ScalarType.Bool && mask.dtype != ScalarType.Float32)
        {
            throw new ArgumentException($"{name} must be a bool (true = take part in attention) or float32 (added to the scores) tensor, not {mask.dtype}.", name);
        }

        if (mask.device_type != global::TorchSharp.DeviceType.CPU)
        {
            throw new ArgumentException($"{name} must be on the CPU, not {mask.device}.", name);
        }

        long[] target = [query.size(0), query.size(1), query.size(2), key.size(2)];
        if (mask.dim() == 0)
        {
            // A 0-d mask is almost always a causal flag passed by position (the mask comes before causal, as in PyTorch).
            throw new ArgumentException($"{name} must have at least one dimension; to mask causally, name the argument: causal: true.", name);
        }

        if (mask.dim() > 4)
        {
            throw new ArgumentException($"{name} must have rank at most 4 (broadcastable to [batch, heads, nq, nk] = [{string.Join(", ", target)}]), not {mask.dim()}.", name);
        }

        long[] padded = [.. Enumerable.Repeat(1L, 4 - (int)mask.dim()), .. mask.shape];
        for (int axis = 0; axis < 4; axis++)
        {
            if (padded[axis] != 1 && padded[axis] != target[axis])
            {
                throw new ArgumentException(
                    $"{name} of shape [{string.Join(", ", mask.shape)}] does not broadcast to [batch, heads, nq, nk] = [{string.Join(", ", target)}] (axis {axis - 4 + mask.dim()}).", name);
            }
        }

        // The smallest core layout that holds the mask: [nq, nk] unless it varies over heads, [heads, nq, nk] unless over batches.
        long[] layout = padded[0] != 1 ? target : padded[1] != 1 ? target[1..] : target[2..];
        var expanded = mask.reshape(padded).expand([padded[0] != 1 ? target[0] : 1, padded[0] != 1 || padded[1] != 1 ? target[1] : 1, target[2], target[3]]).reshape(layout);
        if (mask.dtype == ScalarType.Bool)
        {
            return (expanded.contiguous().data<bool>().ToArray(), null);
        }

        if (expanded.isnan().any().item<bool>())
        {
            throw new ArgumentException($"{name} holds NaN; use -infinity (or a false entry of a bool mask) to hide a key.", name);
        }

        return (null, expanded);
    }
}
