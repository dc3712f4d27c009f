using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>The tensor, polynomial and sketched methods as differentiable functions, beside the exact ones.</summary>
public static partial class FastAttentionFunctions
{
    /// <summary>
    /// Order-3 tensor attention (Alman and Song; docs/algorithms.md §3) with PyTorch's layout, differentiable through the core's
    /// order-3 <see cref="global::FastAttention.TensorAttention"/> backward: each query attends to <i>pairs</i> of keys,
    /// <c>S_i,(j1,j2) = scale sum_l q_il k1_j1,l k2_j2,l</c>, <c>out_i = sum softmax_i(S) (v1_j1 o v2_j2)</c>, at a cost of
    /// <c>4 nq nk^2 d</c>. The batch folds into the heads (there are no grouped-query heads: all five tensors have the query's
    /// heads). Causal keeps pairs with both <c>j1, j2 &lt;= i + nk - nq</c> (bottom-right aligned); a window <c>(w1, w2)</c> keeps the
    /// last <c>w1</c> (for <c>j1</c>) and <c>w2</c> (for <c>j2</c>) keys up to that limit and implies causal. A query that sees no pair
    /// outputs zeros. A non-finite gradient reaching the backward gives NaN gradients.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key1">First keys, <c>[batch, heads, nk, d]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="key2">Second keys, <c>[batch, heads, nk, d]</c>.</param>
    /// <param name="value1">First values, <c>[batch, heads, nk, dv]</c>.</param>
    /// <param name="value2">Second values, <c>[batch, heads, nk, dv]</c>.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal limit to both key indices.</param>
    /// <param name="window">Sliding windows <c>(w1, w2)</c>, each at least 1; null means none.</param>
    /// <param name="scale">The score scale; null means the core's <c>1 / d</c> (Alman–Song's), not <c>1 / sqrt(d)</c>.</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32, not on the CPU, of a rank other than 2 to 4 or of inconsistent or empty shape,
    /// or a bad window (the message names the argument).</exception>
    public static Tensor TensorAttention(Tensor query, Tensor key1, Tensor key2, Tensor value1, Tensor value2, bool causal = false,
        (int First, int Second)? window = null, double? scale = null)
    {
        var t = Inputs([(query, nameof(query)), (key1, nameof(key1)), (key2, nameof(key2)), (value1, nameof(value1)), (value2, nameof(value2))], scale);
        return TensorViews.AtRank(TensorAttentionFunction.apply(t[0], t[1], t[2], t[3], t[4], TensorOptions(causal, window, scale), false), query.dim());
    }

    /// <summary>
    /// <see cref="TensorAttention"/> that also returns each query's log-sum-exp <c>L_i = ln sum_(j1,j2) e^(S_i,(j1,j2))</c> (natural log),
    /// differentiable too (<c>dL_i / dS = P</c>): a model can read how strongly a query matches any pair, which the normalised output
    /// hides (an attention sink is a function of it). A query that sees no pair has <c>L = -inf</c>, zero output and zero gradient.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key1">First keys, <c>[batch, heads, nk, d]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="key2">Second keys, <c>[batch, heads, nk, d]</c>.</param>
    /// <param name="value1">First values, <c>[batch, heads, nk, dv]</c>.</param>
    /// <param name="value2">Second values, <c>[batch, heads, nk, dv]</c>.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal limit to both key indices.</param>
    /// <param name="window">Sliding windows <c>(w1, w2)</c>, each at least 1; null means none.</param>
    /// <param name="scale">The score scale; null means <c>1 / d</c>.</param>
    /// <returns>The output <c>[batch, heads, nq, dv]</c> and the log-sum-exp <c>[batch, heads, nq]</c> (at the query's rank), views of one tensor.</returns>
    /// <exception cref="ArgumentException">As <see cref="TensorAttention"/>.</exception>
    public static (Tensor Output, Tensor LogSumExp) TensorAttentionWithLogSumExp(Tensor query, Tensor key1, Tensor key2, Tensor value1, Tensor value2, bool causal = false,
        (int First, int Second)? window = null, double? scale = null)
    {
        var t = Inputs([(query, nameof(query)), (key1, nameof(key1)), (key2, nameof(key2)), (value1, nameof(value1)), (value2, nameof(value2))], scale);
        var both = TensorViews.AtRank(TensorAttentionFunction.apply(t[0], t[1], t[2], t[3], t[4], TensorOptions(causal, window, scale), true), query.dim());
        long dv = both.size(-1) - 1;
        return (both.narrow(-1, 0, dv), both.select(-1, dv));
    }

    private static TensorAttentionOptions TensorOptions(bool causal, (int First, int Second)? window, double? scale) =>
        new() { Causal = causal, Scale = (float?)scale, MaxDegreeOfParallelism = TorchRuntime.KernelThreads, Windows = window is { } w ? [w.First, w.Second] : null };

    /// <summary>
    /// The polynomial method (Alman and Song; docs/algorithms.md §2) with PyTorch's layout: softmax attention with <c>e^x</c> replaced
    /// by a polynomial of relative error <c>eps</c> on the proven score range <c>[-R, R]</c>, linear in n, differentiable through
    /// <see cref="global::FastAttention.PolynomialAttention.Backward"/>. The degree and coefficients are chosen from this call's
    /// inputs and held fixed in the backward (a discrete choice, carrying no gradient). Grouped-query heads as
    /// <see cref="ScaledDotProductAttention"/>. A non-finite gradient reaching the backward gives NaN gradients.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c> (the query's rank; kvHeads divides heads), float32 on the CPU.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="degree">Force the polynomial's degree; null chooses the smallest that reaches <paramref name="relativeError"/>.</param>
    /// <param name="relativeError">The polynomial's target relative error; null means the core's 1e-3.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal mask.</param>
    /// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32, not on the CPU, of a rank other than 2 to 4 or of inconsistent or empty shape
    /// (the message names it); an <see cref="ArgumentOutOfRangeException"/> when the range is too wide for the error or the features exceed the budget.</exception>
    public static Tensor PolynomialAttention(Tensor query, Tensor key, Tensor value, int? degree = null, double? relativeError = null, bool causal = false, double? scale = null)
    {
        var (q, k, v) = Inputs(query, key, value, scale);
        var options = new PolynomialAttentionOptions { Degree = degree, RelativeError = relativeError, Causal = causal, Scale = (float?)scale, MaxDegreeOfParallelism = TorchRuntime.KernelThreads };
        return TensorViews.AtRank(FactorisedAttentionFunction.apply(q, k, v, options), query.dim());
    }

    /// <summary>
    /// Sketched attention (PolySketchFormer; docs/algorithms.md §2.7) with PyTorch's layout, differentiable through
    /// <see cref="global::FastAttention.SketchedAttention.Backward"/>. It is <b>not softmax</b>: it approximates degree-4 polynomial
    /// attention, weights <c>(scale q.k)^4</c> normalised per row, by the weights <c>(phi(q) . phi(k))^2</c> with
    /// <c>phi(x) = (x S1) o (x S2) / sqrt(m)</c> for Gaussian <c>d x m</c> matrices drawn from <paramref name="seed"/>; the weights are
    /// never negative, so each output is a convex combination of values, and the scale cancels. The forward and backward use the
    /// same seed, hence the same sketch, which is fixed (not trained). Grouped-query heads as <see cref="ScaledDotProductAttention"/>.
    /// A non-finite gradient reaching the backward gives NaN gradients.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, <c>[heads, nq, d]</c> or <c>[nq, d]</c>, float32 on the CPU.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c> (the query's rank; kvHeads divides heads), float32 on the CPU.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c> (the query's rank), float32 on the CPU.</param>
    /// <param name="sketchSize">m, the columns of each sketch matrix (1 to <see cref="global::FastAttention.SketchedAttention.MaxSketchSize"/>).</param>
    /// <param name="seed">The sketch's seed.</param>
    /// <param name="causal">Whether to apply the bottom-right aligned causal mask.</param>
    /// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c> (it cancels in the normalisation).</param>
    /// <returns>The attention output, <c>[batch, heads, nq, dv]</c> at the query's rank, float32, tracking gradients when an input does.</returns>
    /// <exception cref="ArgumentException">A tensor that is not float32, not on the CPU, of a rank other than 2 to 4 or of inconsistent or empty shape
    /// (the message names it); an <see cref="ArgumentOutOfRangeException"/> for a sketch size out of range.</exception>
    public static Tensor SketchedAttention(Tensor query, Tensor key, Tensor value, int sketchSize = global::FastAttention.SketchedAttention.DefaultSketchSize,
        long seed = 0, bool causal = false, double? scale = null)
    {
        var (q, k, v) = Inputs(query, key, value, scale);
        const int maxSketchSize = global::FastAttention.SketchedAttention.MaxSketchSize;
        if (sketchSize is < 1 or > maxSketchSize)
        {
            throw new ArgumentOutOfRangeException(nameof(sketchSize), sketchSize, $"The sketch size must lie in 1 .. {maxSketchSize} (it carries m (m + 1) / 2 features).");
        }

        var options = new SketchedAttentionOptions { SketchSize = sketchSize, Seed = seed, Causal = causal, Scale = (float?)scale, MaxDegreeOfParallelism = TorchRuntime.KernelThreads };
        return TensorViews.AtRank(FactorisedAttentionFunction.apply(q, k, v, options), query.dim());
    }
}
