using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>libtorch loads, and the written-out oracle agrees with libtorch's own scaled_dot_product_attention.</summary>
public sealed class SmokeTests
{
    [Theory]
    [InlineData(1, 1, 7, 7, 8, false)]
    [InlineData(2, 3, 5, 33, 15, false)]
    [InlineData(1, 2, 31, 31, 64, true)]
    public void Written_out_oracle_matches_torch_sdpa(int batch, int heads, int nq, int nk, int d, bool causal)
    {
        using var scope = TorchReference.Start();
        var shape = new AttentionShape(batch, heads, nq, nk, d, d);
        var (qf, kf, vf) = Data.Inputs(shape, seed: 11);
        var q = TorchReference.Constant(qf, TorchReference.QueryDims(shape));
        var k = TorchReference.Constant(kf, TorchReference.KeyDims(shape));
        var v = TorchReference.Constant(vf, TorchReference.ValueDims(shape));

        // With nq == nk, SDPA's top-left causal mask is our bottom-right one (TorchSharp spells the flag is_casual).
        var sdpa = nn.functional.scaled_dot_product_attention(q, k, v, is_casual: causal);
        var ours = TorchReference.Softmax(q, k, v, shape, 1 / Math.Sqrt(d), causal).Output;

        double difference = (sdpa - ours).abs().max().item<double>();
        Assert.True(difference < 1e-12, $"oracle vs SDPA differ by {difference:E3}");
    }
}
