using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>ExactAttention's forward (output and log-sum-exp) against libtorch in float64 on random cases.</summary>
public sealed class ExactAttentionTorchTests
{
    public static IEnumerable<object[]> Seeds => TorchCase.Seeds(24);

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Forward_and_log_sum_exp_match_torch(int seed)
    {
        using var scope = TorchReference.Start();
        var c = TorchCase.Draw(seed, withBias: true);
        var s = c.Shape;
        var (q, k, v) = Data.Inputs(s, seed);

        var output = new float[s.OutputLength];
        var lse = new float[s.BatchSize * s.HeadCount * s.QueryCount];
        ExactAttention.Compute(q, k, v, s, output, lse, Options(c));

        var (torchOutput, torchLse) = Torch(c, q, k, v);
        Compare.Close(output, TorchReference.Values(torchOutput), "output", c);
        Compare.Close(lse, TorchReference.Values(torchLse), "log-sum-exp", c);
    }

    internal static ExactAttentionOptions Options(TorchCase c) => new()
    {
        Scale = c.Scale,
        Causal = c.Causal,
        Bias = c.Bias,
        Mask = c.Mask,
    };

    /// <summary>libtorch's forward on float64 leaves (the returned tensors carry the autograd graph back to them).</summary>
    internal static (Tensor Output, Tensor LogSumExp) Torch(TorchCase c, float[] q, float[] k, float[] v, Tensor? qt = null, Tensor? kt = null, Tensor? vt = null)
    {
        var s = c.Shape;
        qt ??= TorchReference.Leaf(q, TorchReference.QueryDims(s));
        kt ??= TorchReference.Leaf(k, TorchReference.KeyDims(s));
        vt ??= TorchReference.Leaf(v, TorchReference.ValueDims(s));
        var bias = c.Bias is null ? null : TorchReference.Constant(c.Bias, s.QueryCount, s.KeyCount);
        var mask = c.Mask is null ? null : tensor(c.Mask, [s.QueryCount, s.KeyCount]);
        return TorchReference.Softmax(qt, kt, vt, s, c.ScaleOr(1 / Math.Sqrt(s.HeadDim)), c.Causal, bias, mask);
    }
}
