using FastAttention.Torch.Tests.Support;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>ExactAttention's forward (output, log-sum-exp) and backward against libtorch float64 autograd on random cases.</summary>
public sealed class ExactAttentionTorchTests
{
    public static IEnumerable<object[]> Seeds => TorchCase.Seeds(24);

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Forward_and_log_sum_exp_match_torch(int seed)
    {
        using var scope = TorchReference.Start();
        var c = TorchCase.Draw(seed, withBias: true);
        var step = new Step(c);
        ExactAttention.Compute(step.Query, step.Key, step.Value, c.Shape, step.Output, step.LogSumExp, Options(c));

        var torch = Torch(c, step.Leaves());
        Compare.Close(step.Output, TorchReference.Values(torch.Output), "output", c);
        Compare.Close(step.LogSumExp, TorchReference.Values(torch.LogSumExp), "log-sum-exp", c);
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Backward_matches_torch_autograd(int seed)
    {
        using var scope = TorchReference.Start();
        var c = TorchCase.Draw(seed, withBias: true);
        var step = new Step(c);

        // Ours: the forward that training calls (output and log-sum-exp), then the backward from them.
        var options = Options(c);
        ExactAttention.Compute(step.Query, step.Key, step.Value, c.Shape, step.Output, step.LogSumExp, options);
        ExactAttention.Backward(step.Query, step.Key, step.Value, step.Output, step.OutputGradient, step.LogSumExp, c.Shape,
            step.QueryGradient, step.KeyGradient, step.ValueGradient, options);

        var leaves = step.Leaves();
        Compare.Gradients(step, Torch(c, leaves).Gradients(step.OutputGradient, leaves), "", c);
    }

    private static ExactAttentionOptions Options(TorchCase c) => new()
    {
        Scale = c.Scale,
        Causal = c.Causal,
        Bias = c.Bias,
        Mask = c.Mask,
    };

    /// <summary>libtorch's forward on the float64 leaves (the returned tensors carry the autograd graph back to them).</summary>
    private static TorchForward Torch(TorchCase c, (Tensor Q, Tensor K, Tensor V) leaves)
    {
        var s = c.Shape;
        var bias = c.Bias is null ? null : TorchReference.Constant(c.Bias, s.QueryCount, s.KeyCount);
        return TorchReference.Softmax(leaves.Q, leaves.K, leaves.V, s, c.ScaleOr(1 / Math.Sqrt(s.HeadDim)), c.Causal, bias, TorchReference.Mask(c));
    }
}
