using FastAttention.TorchInterop;
using static TorchSharp.torch;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// PyTorch's scaled_dot_product_attention (libtorch 2.10 through TorchSharp) forward and backward on <c>heads</c>
/// heads (<c>[1, h, n, d]</c>, our layout), fp32, from the same arrays our methods get. SDPA's is_causal is top-left aligned, which for nq = nk is our
/// bottom-right mask; its default scale is ours, 1/sqrt(d).
/// </summary>
internal sealed class TorchPeer : IDisposable
{
    private readonly Tensor _q, _k, _v;
    private readonly Tensor? _outputGradient;
    private readonly bool _causal;

    public TorchPeer(float[] q, float[] k, float[] v, float[]? outputGradient, int n, int d, bool causal, int threads, int heads = 1)
    {
        TorchSharpNative.EnsureLoaded();
        set_num_threads(threads);
        long[] dims = [1, heads, n, d];
        _q = tensor(q, dims, requires_grad: true);
        _k = tensor(k, dims, requires_grad: true);
        _v = tensor(v, dims, requires_grad: true);
        _outputGradient = outputGradient is null ? null : tensor(outputGradient, dims);
        _causal = causal;
    }

    /// <summary>One forward and backward; returns (output, dQ, dK, dV) as arrays when <paramref name="copy"/>, else nulls.</summary>
    public (float[] O, float[] Dq, float[] Dk, float[] Dv)? Run(bool copy = false)
    {
        using var scope = NewDisposeScope();
        var output = nn.functional.scaled_dot_product_attention(_q, _k, _v, is_casual: _causal);
        var grads = autograd.grad([output], [_q, _k, _v], [_outputGradient ?? throw new InvalidOperationException("TorchPeer: the training step needs an output gradient")]);
        return copy ? (Array(output), Array(grads[0]), Array(grads[1]), Array(grads[2])) : null;
    }

    /// <summary>Forward only (no graph), as an inference call; returns the output as an array when <paramref name="copy"/>, else null.</summary>
    public float[]? Forward(bool copy = false)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = nn.functional.scaled_dot_product_attention(_q, _k, _v, is_casual: _causal);
        return copy ? Array(output) : null;
    }

    public void Dispose()
    {
        _q.Dispose();
        _k.Dispose();
        _v.Dispose();
        _outputGradient?.Dispose();
    }

    private static float[] Array(Tensor t) => t.detach().contiguous().data<float>().ToArray();
}
