using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace FastAttention.TorchSharp;

/// <summary>
/// The autograd node of <see cref="FastAttentionFunctions.PolynomialAttention"/> and <see cref="FastAttentionFunctions.SketchedAttention"/>
/// (the core's factorised engine): inputs <c>[batch, heads, n, d]</c> float32 CPU tensors and either
/// <see cref="PolynomialAttentionOptions"/> or <see cref="SketchedAttentionOptions"/>; saves the contiguous inputs and the output
/// for the matching backward, which rebuilds the same polynomial (from the same inputs) or the same sketch (from the same seed).
/// </summary>
internal sealed class FactorisedAttentionFunction : SingleTensorFunction<FactorisedAttentionFunction>
{
    private const string OptionsKey = "options";

    /// <inheritdoc/>
    public override string Name => "FastAttentionFactorisedAttention";

    /// <summary>Runs the polynomial or sketched forward, as the options say.</summary>
    /// <param name="ctx">The autograd context the backward reads.</param>
    /// <param name="vars">Query, key, value (tensors) and the method's options.</param>
    /// <returns>The output, <c>[batch, heads, nq, dv]</c>.</returns>
    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var (q, k, v, shape) = TensorViews.Contiguous(vars);
        var (output, _) = TensorViews.Outputs(shape);
        if (vars[3] is PolynomialAttentionOptions polynomial)
        {
            global::FastAttention.PolynomialAttention.Compute(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), shape, TensorViews.Floats(output), polynomial);
        }
        else
        {
            global::FastAttention.SketchedAttention.Compute(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), shape, TensorViews.Floats(output), (SketchedAttentionOptions)vars[3]);
        }

        ctx.save_for_backward([q, k, v, output.detach()]);
        ctx.save_data(OptionsKey, vars[3]);
        return output;
    }

    /// <summary>
    /// Runs the matching backward from the saved tensors. A non-finite output gradient gives NaN gradients (the core rejects it,
    /// and an exception thrown here would end the process: TorchSharp calls backward from native code).
    /// </summary>
    /// <param name="ctx">The context <see cref="forward"/> filled.</param>
    /// <param name="grad_output">The gradient of the loss with respect to the output.</param>
    /// <returns>dQ, dK, dV and no gradient for the options.</returns>
    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        var saved = ctx.get_saved_variables();
        var (q, k, v, output) = (saved[0], saved[1], saved[2], saved[3]);
        var dO = grad_output.to_type(ScalarType.Float32).contiguous();
        if (TensorViews.NonFinite(dO))
        {
            return TensorViews.NaNGradients(q, k, v);
        }

        var shape = TensorViews.Shape(q, k, v);
        var (dQ, dK, dV) = (empty_like(q), empty_like(k), empty_like(v));
        if (ctx.get_data(OptionsKey) is PolynomialAttentionOptions polynomial)
        {
            global::FastAttention.PolynomialAttention.Backward(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), TensorViews.Floats(output), TensorViews.Floats(dO),
                shape, TensorViews.Floats(dQ), TensorViews.Floats(dK), TensorViews.Floats(dV), polynomial);
        }
        else
        {
            global::FastAttention.SketchedAttention.Backward(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), TensorViews.Floats(output), TensorViews.Floats(dO),
                shape, TensorViews.Floats(dQ), TensorViews.Floats(dK), TensorViews.Floats(dV), (SketchedAttentionOptions)ctx.get_data(OptionsKey));
        }

        return [dQ, dK, dV, null!];
    }
}
