using FastAttention.Torch.Tests.Support;

namespace FastAttention.Torch.Tests;

/// <summary>PowerAttention (rows of |s Q K^T|^p normalised) forward, ln Z and backward against libtorch float64 autograd.</summary>
public sealed class PowerAttentionTorchTests
{
    public static IEnumerable<object[]> Seeds => TorchCase.Seeds(16);

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Forward_backward_and_log_normaliser_match_torch_autograd(int seed)
    {
        using var scope = TorchReference.Start();
        var c = TorchCase.Draw(seed, withBias: false);
        var step = new Step(c);

        // p >= 1: |x|^p is differentiable at 0 with derivative 0 (for p = 1, 0 is autograd's subgradient of |x|;
        // random scores are never exactly 0).
        float power = new[] { 1f, 1.5f, 2f, 3f }[seed % 4];
        var options = new PowerAttentionOptions { Power = power, Scale = c.Scale, Causal = c.Causal, Mask = c.Mask };
        PowerAttention.Compute(step.Query, step.Key, step.Value, c.Shape, step.Output, step.LogSumExp, options);
        PowerAttention.Backward(step.Query, step.Key, step.Value, step.Output, step.OutputGradient, step.LogSumExp, c.Shape,
            step.QueryGradient, step.KeyGradient, step.ValueGradient, options);

        var leaves = step.Leaves();
        var torch = TorchReference.Power(leaves.Q, leaves.K, leaves.V, c.Shape, power, c.ScaleOr(1), c.Causal, TorchReference.Mask(c));
        string what = $" (p = {power})";
        Compare.Close(step.Output, TorchReference.Values(torch.Output), "output" + what, c);
        Compare.Close(step.LogSumExp, TorchReference.Values(torch.LogSumExp), "ln Z" + what, c);
        Compare.Gradients(step, torch.Gradients(step.OutputGradient, leaves), what, c);
    }
}
