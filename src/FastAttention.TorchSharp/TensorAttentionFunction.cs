using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace FastAttention.TorchSharp;

/// <summary>
/// The autograd node of <see cref="FastAttentionFunctions.TensorAttention"/>: query, key1, key2, value1, value2 as
/// <c>[batch, heads, n, d]</c> float32 CPU tensors (batch folded into heads for the core's <c>[h, n, d]</c>) and the
/// <see cref="TensorAttentionOptions"/>; saves the contiguous inputs, the output and the log-sum-exp for the order-3
/// <see cref="global::FastAttention.TensorAttention"/> backward.
/// </summary>
internal sealed class TensorAttentionFunction : SingleTensorFunction<TensorAttentionFunction>
{
    private const string OptionsKey = "options";
    private const string WithLogSumExpKey = "lse";

    /// <inheritdoc/>
    public override string Name => "FastAttentionTensorAttention";

    /// <summary>Runs the core's order-3 forward with log-sum-exp.</summary>
    /// <param name="ctx">The autograd context the backward reads.</param>
    /// <param name="vars">Query, key1, key2, value1, value2 (tensors), the <see cref="TensorAttentionOptions"/> and whether to return the log-sum-exp too.</param>
    /// <returns>The output, <c>[batch, heads, nq, dv]</c>; with the log-sum-exp, <c>[batch, heads, nq, dv + 1]</c> whose last channel is <c>L_i</c>.</returns>
    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var options = (TensorAttentionOptions)vars[5];
        bool withLogSumExp = (bool)vars[6];
        var inputs = Enumerable.Range(0, 5).Select(i => ((Tensor)vars[i]).contiguous()).ToArray();
        var shape = Shape(inputs);
        var output = empty([inputs[0].size(0), inputs[0].size(1), shape.QueryCount, shape.ValueDim], ScalarType.Float32);
        var logSumExp = empty([inputs[0].size(0), inputs[0].size(1), shape.QueryCount], ScalarType.Float32);
        global::FastAttention.TensorAttention.Compute(TensorViews.Floats(inputs[0]), TensorViews.Floats(inputs[1]), TensorViews.Floats(inputs[2]),
            TensorViews.Floats(inputs[3]), TensorViews.Floats(inputs[4]), shape, TensorViews.Floats(output), TensorViews.Floats(logSumExp), options);
        ctx.save_for_backward([.. inputs, output.detach(), logSumExp]);
        ctx.save_data(OptionsKey, options);
        ctx.save_data(WithLogSumExpKey, withLogSumExp);
        return withLogSumExp ? cat([output, logSumExp.unsqueeze(-1)], -1) : output;
    }

    /// <summary>
    /// Runs the core's backward from the saved tensors. A non-finite output gradient gives NaN gradients (the core rejects it,
    /// and an exception thrown here would end the process: TorchSharp calls backward from native code).
    /// </summary>
    /// <param name="ctx">The context <see cref="forward"/> filled.</param>
    /// <param name="grad_output">The gradient of the loss with respect to the output.</param>
    /// <returns>dQ, dK1, dK2, dV1, dV2 and no gradient for the options.</returns>
    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        var saved = ctx.get_saved_variables();
        var inputs = saved.Take(5).ToArray();
        var (output, logSumExp) = (saved[5], saved[6]);
        bool withLogSumExp = (bool)ctx.get_data(WithLogSumExpKey);
        var gradient = grad_output.to_type(ScalarType.Float32);
        long dv = output.size(-1);
        var dO = withLogSumExp ? gradient.narrow(-1, 0, dv).contiguous() : gradient.contiguous();
        // A query that sees no pair (L = -inf) has P = 0: whatever reaches its log-sum-exp does not matter, so it is zeroed.
        var dL = withLogSumExp ? where(logSumExp.isneginf(), zeros_like(logSumExp), gradient.select(-1, dv)).contiguous() : null;
        if (TensorViews.NonFinite(dO) || (dL is not null && TensorViews.NonFinite(dL)))
        {
            return [.. TensorViews.NaNGradients(inputs), null!];
        }

        var options = (TensorAttentionOptions)ctx.get_data(OptionsKey);
        var grads = inputs.Select(t => empty_like(t)).ToArray();
        global::FastAttention.TensorAttention.Backward(TensorViews.Floats(inputs[0]), TensorViews.Floats(inputs[1]), TensorViews.Floats(inputs[2]),
            TensorViews.Floats(inputs[3]), TensorViews.Floats(inputs[4]), TensorViews.Floats(output), TensorViews.Floats(dO), TensorViews.Floats(logSumExp), Shape(inputs),
            TensorViews.Floats(grads[0]), TensorViews.Floats(grads[1]), TensorViews.Floats(grads[2]), TensorViews.Floats(grads[3]), TensorViews.Floats(grads[4]), options, dL is null ? default : TensorViews.Floats(dL));
        return [.. grads, null!, null!];
    }

    /// <summary>The core's order-3 shape, batch folded into heads: <c>h = batch heads</c> (the core checks the five lengths against it).</summary>
    private static TensorAttentionShape Shape(Tensor[] inputs)
    {
        long heads = inputs[0].size(0) * inputs[0].size(1);
        return new TensorAttentionShape(heads <= int.MaxValue ? (int)heads : throw new ArgumentException($"query has {heads} batch x heads, more than {int.MaxValue}.", "query"),
            TensorViews.Size(inputs[0], 2, "query"), TensorViews.Size(inputs[1], 2, "key1"), TensorViews.Size(inputs[0], 3, "query"), TensorViews.Size(inputs[3], 3, "value1"));
    }
}
