using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace FastAttention.TorchSharp;

/// <summary>
/// The autograd node of <see cref="FastAttentionFunctions.LevAttention"/>: inputs <c>[batch, heads, n, d]</c> float32 CPU
/// tensors and the <see cref="LevAttentionOptions"/>; saves the contiguous inputs, the output, the log-sum-exp and the
/// selections for <see cref="global::FastAttention.LevAttention.Backward"/>, which holds the selection fixed.
/// </summary>
internal sealed class LevAttentionFunction : SingleTensorFunction<LevAttentionFunction>
{
    private const string OptionsKey = "options";
    private const string SelectionsKey = "selections";

    /// <inheritdoc/>
    public override string Name => "FastAttentionLevAttention";

    /// <summary>Runs our forward, selecting keys per (batch, kv head) on this call's keys.</summary>
    /// <param name="ctx">The autograd context the backward reads.</param>
    /// <param name="vars">Query, key, value (tensors) and the <see cref="LevAttentionOptions"/>.</param>
    /// <returns>The output, <c>[batch, heads, nq, dv]</c>.</returns>
    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var options = (LevAttentionOptions)vars[3];
        var (q, k, v, shape) = TensorViews.Contiguous(vars);
        var (output, logSumExp) = TensorViews.Outputs(shape);
        var selections = global::FastAttention.LevAttention.Compute(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), shape,
            TensorViews.Floats(output), TensorViews.Floats(logSumExp), options);
        ctx.save_for_backward([q, k, v, output.detach(), logSumExp]);
        ctx.save_data(OptionsKey, options);
        ctx.save_data(SelectionsKey, selections);
        return output;
    }

    /// <summary>
    /// Runs our backward from the saved tensors and selections. A non-finite output gradient gives NaN gradients (an
    /// exception thrown here would end the process: TorchSharp calls backward from native code).
    /// </summary>
    /// <param name="ctx">The context <see cref="forward"/> filled.</param>
    /// <param name="grad_output">The gradient of the loss with respect to the output.</param>
    /// <returns>dQ, dK, dV and no gradient for the options.</returns>
    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        var saved = ctx.get_saved_variables();
        var (q, k, v, output, logSumExp) = (saved[0], saved[1], saved[2], saved[3], saved[4]);
        var options = (LevAttentionOptions)ctx.get_data(OptionsKey);
        var selections = (IReadOnlyList<LevSelection>)ctx.get_data(SelectionsKey);
        var shape = TensorViews.Shape(q, k, v);
        var dO = grad_output.to_type(ScalarType.Float32).contiguous();
        if (TensorViews.NonFinite(dO))
        {
            return TensorViews.NaNGradients(q, k, v);
        }

        var (dQ, dK, dV) = (empty_like(q), empty_like(k), empty_like(v));
        global::FastAttention.LevAttention.Backward(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), TensorViews.Floats(output),
            TensorViews.Floats(dO), TensorViews.Floats(logSumExp), selections, shape, TensorViews.Floats(dQ), TensorViews.Floats(dK), TensorViews.Floats(dV), options);
        return [dQ, dK, dV, null!];
    }
}
