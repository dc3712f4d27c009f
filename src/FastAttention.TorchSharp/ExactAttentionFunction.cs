using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace FastAttention.TorchSharp;

/// <summary>
/// The autograd node of <see cref="FastAttentionFunctions.ScaledDotProductAttention"/>: inputs <c>[batch, heads, n, d]</c>
/// float32 CPU tensors, an optional float32 bias in one of the core's layouts (<see cref="AttentionMask"/>) and the
/// <see cref="ExactAttentionOptions"/> (causal, scale, bool mask); saves the contiguous inputs, the output and the log-sum-exp
/// for <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>,
/// or the overload with <c>biasGradient</c> when the bias tracks gradients.
/// </summary>
internal sealed class ExactAttentionFunction : SingleTensorFunction<ExactAttentionFunction>
{
    private const string OptionsKey = "options";
    private const string BiasShapeKey = "bias shape";

    /// <inheritdoc/>
    public override string Name => "FastAttentionScaledDotProductAttention";

    /// <summary>Runs our forward; <paramref name="vars"/> is query, key, value, bias (or null), options.</summary>
    /// <param name="ctx">The autograd context the backward reads.</param>
    /// <param name="vars">Query, key, value, the bias (tensors; the bias may be null) and the <see cref="ExactAttentionOptions"/>.</param>
    /// <returns>The output, <c>[batch, heads, nq, dv]</c>.</returns>
    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var options = (ExactAttentionOptions)vars[4];
        if (vars[3] is Tensor bias)
        {
            // The core reads the bias from an array: one copy of the (already expanded) mask.
            options = options with { Bias = bias.contiguous().data<float>().ToArray() };
            if (bias.requires_grad)
            {
                ctx.save_data(BiasShapeKey, bias.shape);
            }
        }

        var (q, k, v, shape) = TensorViews.Contiguous(vars);
        var (output, logSumExp) = TensorViews.Outputs(shape);
        ExactAttention.Compute(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), shape, TensorViews.Floats(output), TensorViews.Floats(logSumExp), options);
        ctx.save_for_backward([q, k, v, output.detach(), logSumExp]);
        ctx.save_data(OptionsKey, options);
        return output;
    }

    /// <summary>Runs our backward from the saved tensors.</summary>
    /// <param name="ctx">The context <see cref="forward"/> filled.</param>
    /// <param name="grad_output">The gradient of the loss with respect to the output.</param>
    /// <returns>dQ, dK, dV, dBias (null unless the bias tracks gradients) and no gradient for the options.</returns>
    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        var saved = ctx.get_saved_variables();
        var (q, k, v, output, logSumExp) = (saved[0], saved[1], saved[2], saved[3], saved[4]);
        // An exception thrown here cannot reach the caller (TorchSharp calls backward from native code; it would end the
        // process), so non-finite values in the output gradient propagate, as in PyTorch.
        var options = (ExactAttentionOptions)ctx.get_data(OptionsKey) with { AllowNonFinite = true };
        var shape = TensorViews.Shape(q, k, v);
        var dO = grad_output.to_type(ScalarType.Float32).contiguous();
        var (dQ, dK, dV) = (empty_like(q), empty_like(k), empty_like(v));
        if (ctx.get_data(BiasShapeKey) is long[] biasShape)
        {
            var dBias = empty(biasShape, ScalarType.Float32);
            ExactAttention.Backward(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), TensorViews.Floats(output), TensorViews.Floats(dO),
                TensorViews.Floats(logSumExp), shape, TensorViews.Floats(dQ), TensorViews.Floats(dK), TensorViews.Floats(dV), TensorViews.Floats(dBias), options);
            return [dQ, dK, dV, dBias, null!];
        }

        ExactAttention.Backward(TensorViews.Floats(q), TensorViews.Floats(k), TensorViews.Floats(v), TensorViews.Floats(output), TensorViews.Floats(dO),
            TensorViews.Floats(logSumExp), shape, TensorViews.Floats(dQ), TensorViews.Floats(dK), TensorViews.Floats(dV), options);
        return [dQ, dK, dV, null!, null!];
    }
}
