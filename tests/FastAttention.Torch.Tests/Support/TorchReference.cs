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

    /// <summary>softmax(s Q K^T + bias) V over the visible keys; returns (output [b,h,nq,dv], log-sum-exp [b,h,nq]).</summary>
    public static (Tensor Output, Tensor LogSumExp) Softmax(Tensor q, Tensor k, Tensor v, AttentionShape shape, double scale, bool causal, Tensor? bias = null, Tensor? mask = null)
    {
        var scores = matmul(q, Heads(k, shape).transpose(-2, -1)) * scale;
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
        var output = matmul(e / where(z > 0, z, ones_like(z)), Heads(v, shape));
        return (output, (z.log() + max).squeeze(-1));
    }

    /// <summary>Rows of |s Q K^T|^p normalised to sum 1 over the visible keys, times V; returns (output, ln Z).</summary>
    public static (Tensor Output, Tensor LogSumExp) Power(Tensor q, Tensor k, Tensor v, AttentionShape shape, double power, double scale, bool causal, Tensor? mask = null)
    {
        var weights = (matmul(q, Heads(k, shape).transpose(-2, -1)) * scale).abs().pow(power);
        weights = weights.masked_fill(Visible(shape, causal, mask).logical_not(), 0.0);
        var z = weights.sum(-1, keepdim: true);
        var output = matmul(weights / where(z > 0, z, ones_like(z)), Heads(v, shape));
        return (output, z.log().squeeze(-1));
    }

    /// <summary>Runs autograd of sum(output * dO) and returns the three input gradients.</summary>
    public static (double[] Query, double[] Key, double[] Value) Gradients(Tensor output, float[] outputGradient, Tensor q, Tensor k, Tensor v)
    {
        (output * Constant(outputGradient, output.shape)).sum().backward();
        return (Values(q.grad!), Values(k.grad!), Values(v.grad!));
    }

    /// <summary>Each query head's key/value head (grouped-query attention: query head h reads kv head h / (heads / kvHeads)).</summary>
    private static Tensor Heads(Tensor kv, AttentionShape shape) =>
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
