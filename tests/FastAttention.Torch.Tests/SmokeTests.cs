using FastAttention.TorchInterop;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void Libtorch_loads_and_runs_sdpa()
    {
        TorchSharpNative.EnsureLoaded();
        using var scope = NewDisposeScope();
        var q = randn(1, 1, 3, 4, dtype: float64);
        var o = nn.functional.scaled_dot_product_attention(q, q, q);
        Assert.Equal(new long[] { 1, 1, 3, 4 }, o.shape);
    }
}
