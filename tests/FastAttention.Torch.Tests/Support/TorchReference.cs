using FastAttention.TorchInterop;
using TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests.Support;

/// <summary>
/// libtorch (through TorchSharp) as the oracle: attention written out with tensor ops in float64 and
/// differentiated by autograd. The formulas are written out (not SDPA) because our causal mask is bottom-right
/// aligned (query i sees key j iff j &lt;= i + nk - nq) where SDPA's is_causal is top-left, and because a row that
/// sees no key must give zeros (and log-sum-exp -infinity) instead of NaN.
/// </summary>
internal static class TorchReference
{
    /// <summary>Loads libtorch (failing the test with a one-line reason when it cannot) and returns a dispose scope for the test's tensors.</summary>
    public static DisposeScope Start()
    {
        TorchSharpNative.EnsureLoaded();
        return NewDisposeScope();
    }

    /// <summary>A float64 leaf tensor holding <paramref name="data"/>, tracking gradients.</summary>
    public static Tensor Leaf(float[] data, params long[] dims) =>
        tensor(Array.ConvertAll(data, x => (double)x), dims, dtype: float64, requires_grad: true);

    /// <summary>A float64 constant holding <paramref name="data"/>.</summary>
    public static Tensor Constant(float[] data, params long[] dims) => tensor(Array.ConvertAll(data, x => (double)x), dims, dtype: float64);

    public static double[] Values(Tensor t) => t.detach().contiguous().data<double>().ToArray();

    public static long[] QueryDims(AttentionShape s) => [s.BatchSize, s.HeadCount, s.QueryCount, s.HeadDim];

    public static long[] KeyDims(AttentionShape s) => [s.BatchSize, s.EffectiveKeyValueHeads, s.KeyCount, s.HeadDim];

    public static long[] ValueDims(AttentionShape s) => [s.BatchSize, s.EffectiveKeyValueHeads, s.KeyCount, s.ValueDim];

    public static long[] OutputDims(AttentionShape s) => [s.BatchSize, s.HeadCount, s.QueryCount, s.ValueDim];

    /// <summary>softmax(s Q K^T + bias) V over the visible keys, with log-sum-exp [b,h,nq].</summary>
    public static TorchForward Softmax(Tensor q, Tensor k, Tensor v, AttentionShape shape, double scale, bool causal, Tensor? bias = null, Tensor? mask = null)
    {
        var product = Product(q, k, shape);
        var scores = product * scale;
        if (bias is not null)
        {
            scores = scores + bias;
        }

        scores = scores.masked_fill(Visible(shape, causal, mask).logical_not(), double.NegativeInfinity);

        // Shift by the row maximum (a constant for autograd: the result does not depend on it), 0 for empty rows.
        var max = scores.amax([-1], keepdim: true).detach();
        max = where(max.isfinite(), max, zeros_like(max));
        var e = (scores - max).exp();
        var z = e.sum(-1, keepdim: true);
        var weights = e / where(z > 0, z, ones_like(z));
        return new TorchForward(matmul(weights, Heads(v, shape)), (z.log() + max).squeeze(-1), weights, full_like(weights, scale), shape);
    }

    /// <summary>Rows of |s Q K^T|^p normalised to sum 1 over the visible keys, times V, with ln Z.</summary>
    public static TorchForward Power(Tensor q, Tensor k, Tensor v, AttentionShape shape, double power, double scale, bool causal, Tensor? mask = null)
    {
        var product = Product(q, k, shape);
        var powers = (product * scale).abs().pow(power).masked_fill(Visible(shape, causal, mask).logical_not(), 0.0);
        var z = powers.sum(-1, keepdim: true);
        var weights = powers / where(z > 0, z, ones_like(z));
        // d(p ln|s x|)/dx = p / x where a key is visible (weight > 0).
        var slope = where(weights.detach() > 0, power / product.detach().abs(), zeros_like(weights));
        return new TorchForward(matmul(weights, Heads(v, shape)), z.log().squeeze(-1), weights, slope, shape);
    }

    /// <summary>Q K^T per query head, [b, h, nq, nk].</summary>
    private static Tensor Product(Tensor q, Tensor k, AttentionShape shape) => matmul(q, Heads(k, shape).transpose(-2, -1));

    /// <summary>The case's boolean mask as a [nq, nk] tensor, or null.</summary>
    public static Tensor? Mask(TorchCase c) => c.Mask is null ? null : tensor(c.Mask, [c.Shape.QueryCount, c.Shape.KeyCount]);

    /// <summary>Each query head's key/value head (grouped-query attention: query head h reads kv head h / (heads / kvHeads)).</summary>
    internal static Tensor Heads(Tensor kv, AttentionShape shape) =>
        shape.HeadCount == shape.EffectiveKeyValueHeads ? kv : kv.repeat_interleave(shape.HeadCount / shape.EffectiveKeyValueHeads, dim: 1);

    /// <summary>Which (query, key) pairs are visible, [nq, nk] (or the mask's shape).</summary>
    private static Tensor Visible(AttentionShape shape, bool causal, Tensor? mask)
    {
        var visible = mask ?? ones(shape.QueryCount, shape.KeyCount, dtype: @bool);
        if (causal)
        {
            // Bottom-right aligned: key j visible from query i iff j - i <= nk - nq.
            visible = visible.logical_and(ones(shape.QueryCount, shape.KeyCount, dtype: @bool).tril(shape.KeyCount - shape.QueryCount));
        }

        return visible;
    }
}
