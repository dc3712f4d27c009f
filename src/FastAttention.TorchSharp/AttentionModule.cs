using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>
/// A parameterless attention operator as a TorchSharp module: <c>forward(query, key, value)</c> with query
/// <c>[batch, heads, nq, d]</c> and key/value <c>[batch, kvHeads, nk, d]</c> (kvHeads divides heads) gives
/// <c>[batch, heads, nq, dv]</c>. <see cref="MultiheadSelfAttention"/> holds one, so a model's attention can be swapped
/// (for evaluation or fine-tuning) without touching its weights.
/// </summary>
public abstract class AttentionModule : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    /// <summary>Names the module.</summary>
    /// <param name="name">The module's name (TorchSharp's <c>GetName()</c>).</param>
    protected AttentionModule(string name)
        : base(name)
    {
    }

    /// <summary>A short description for logs and reports, such as <c>lev(top=32)</c>.</summary>
    public abstract string Describe();
}

/// <summary>Softmax attention on FastAttention's exact kernels (<see cref="FastAttentionFunctions.ScaledDotProductAttention"/>).</summary>
/// <param name="causal">Apply the bottom-right aligned causal mask.</param>
/// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
public sealed class SoftmaxAttentionModule(bool causal = false, double? scale = null) : AttentionModule(nameof(SoftmaxAttentionModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3) =>
        FastAttentionFunctions.ScaledDotProductAttention(input1, input2, input3, causal: causal, scale: scale);

    /// <inheritdoc/>
    public override string Describe() => causal ? "softmax(causal)" : "softmax";
}

/// <summary>
/// LevAttention on FastAttention's kernels (<see cref="FastAttentionFunctions.LevAttention"/>): each (batch, kv head)
/// keeps the keys selected on the current call's keys, recomputed at every call.
/// </summary>
/// <param name="top">Keep the k keys with the largest scores (exactly one of <paramref name="top"/> and <paramref name="eps"/>).</param>
/// <param name="eps">Keep the universal set at this threshold.</param>
/// <param name="power">0: softmax over the kept keys; p in (0, 4): power attention.</param>
/// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
/// <param name="keepFirst">Always keep the first this many keys (a ViT's CLS token).</param>
/// <param name="keepLast">Always keep the last this many keys.</param>
public sealed class LevAttentionModule(int? top = null, double? eps = null, double power = 0, double? scale = null, int keepFirst = 0, int keepLast = 0)
    : AttentionModule(nameof(LevAttentionModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3) =>
        FastAttentionFunctions.LevAttention(input1, input2, input3, top, eps, power, scale, keepFirst, keepLast);

    /// <inheritdoc/>
    public override string Describe() =>
        $"lev({(top is { } k ? $"top={k}" : $"eps={eps}")}{(power > 0 ? $", p={power}" : "")}{(keepFirst > 0 ? $", first={keepFirst}" : "")}{(keepLast > 0 ? $", last={keepLast}" : "")})";
}

/// <summary>
/// TorchSharp's own <c>scaled_dot_product_attention</c> (libtorch's kernels and autograd), the peer our modules are
/// compared with; grouped-query key/value heads are repeated to the query's head count first.
/// </summary>
/// <param name="causal">PyTorch's top-left aligned <c>is_causal</c>.</param>
public sealed class TorchSdpaModule(bool causal = false) : AttentionModule(nameof(TorchSdpaModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3)
    {
        long groups = input1.size(1) / input2.size(1);
        var (key, value) = groups == 1 ? (input2, input3) : (input2.repeat_interleave(groups, 1), input3.repeat_interleave(groups, 1));
        return nn.functional.scaled_dot_product_attention(input1, key, value, is_casual: causal);
    }

    /// <inheritdoc/>
    public override string Describe() => causal ? "torch-sdpa(causal)" : "torch-sdpa";
}

/// <summary>
/// The polynomial method on FastAttention's factorised engine (<see cref="FastAttentionFunctions.PolynomialAttention"/>): softmax
/// attention with <c>e^x</c> replaced by a polynomial fitted to each call's proven score range, linear in n.
/// </summary>
/// <param name="degree">Force the degree; null chooses the smallest that reaches <paramref name="relativeError"/>.</param>
/// <param name="relativeError">The polynomial's target relative error; null means 1e-3.</param>
/// <param name="causal">Apply the bottom-right aligned causal mask.</param>
/// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c>.</param>
public sealed class PolynomialAttentionModule(int? degree = null, double? relativeError = null, bool causal = false, double? scale = null)
    : AttentionModule(nameof(PolynomialAttentionModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3) =>
        FastAttentionFunctions.PolynomialAttention(input1, input2, input3, degree, relativeError, causal, scale);

    /// <inheritdoc/>
    public override string Describe() =>
        $"polynomial({(degree is { } g ? $"degree={g}" : $"eps={NumberText.Format(relativeError ?? 1e-3)}")}{(causal ? ", causal" : "")})";
}

/// <summary>
/// Sketched degree-4 polynomial attention (PolySketchFormer; <see cref="FastAttentionFunctions.SketchedAttention"/>): <b>not
/// softmax</b>, weights approximating <c>(q.k)^4</c> from a fixed seeded sketch, linear in n.
/// </summary>
/// <param name="sketchSize">m, the sketch's columns.</param>
/// <param name="seed">The sketch's seed (the same for every call, forward and backward).</param>
/// <param name="causal">Apply the bottom-right aligned causal mask.</param>
/// <param name="scale">The score scale; null means <c>1 / sqrt(d)</c> (it cancels).</param>
public sealed class SketchedAttentionModule(int sketchSize = SketchedAttention.DefaultSketchSize, long seed = 0, bool causal = false, double? scale = null)
    : AttentionModule(nameof(SketchedAttentionModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3) =>
        FastAttentionFunctions.SketchedAttention(input1, input2, input3, sketchSize, seed, causal, scale);

    /// <inheritdoc/>
    public override string Describe() => $"sketched(m={sketchSize}, seed={seed}{(causal ? ", causal" : "")})";
}

/// <summary>
/// Order-3 tensor attention as a TorchSharp module (<see cref="FastAttentionFunctions.TensorAttention"/>):
/// <c>forward(query, key1, key2, value1, value2)</c> with query <c>[batch, heads, nq, d]</c>, keys <c>[batch, heads, nk, d]</c> and
/// values <c>[batch, heads, nk, dv]</c> gives <c>[batch, heads, nq, dv]</c>. Parameterless.
/// </summary>
/// <param name="causal">Apply the bottom-right aligned causal limit to both key indices.</param>
/// <param name="window">Sliding windows <c>(w1, w2)</c> (imply causal); null means none.</param>
/// <param name="scale">The score scale; null means <c>1 / d</c>.</param>
public sealed class TensorAttentionModule(bool causal = false, (int First, int Second)? window = null, double? scale = null)
    : nn.Module<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(nameof(TensorAttentionModule))
{
    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3, Tensor input4, Tensor input5) =>
        FastAttentionFunctions.TensorAttention(input1, input2, input3, input4, input5, causal, window, scale);

    /// <summary>A short description for logs and reports, such as <c>tensor(window=(8, 8))</c>.</summary>
    /// <returns>The description.</returns>
    public string Describe() =>
        window is { } w ? $"tensor(window=({w.First}, {w.Second}))" : causal ? "tensor(causal)" : "tensor";
}
