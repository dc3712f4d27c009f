namespace FastAttention.PeerBenchmarks;

/// <summary>Our exact attention on <c>heads</c> heads (<c>[h, n, d]</c>): the inference forward, and the training step
/// (<see cref="ExactAttention"/>'s forward with log-sum-exp, then its backward).</summary>
internal sealed class OursPeer(float[] q, float[] k, float[] v, float[]? outputGradient, int n, int d, bool causal, int threads, int heads = 1)
{
    private readonly AttentionShape _shape = new(1, heads, n, n, d, d);
    private readonly ExactAttentionOptions _options = new() { Causal = causal, MaxDegreeOfParallelism = threads };
    private readonly float[] _output = new float[heads * n * d], _lse = new float[heads * n];
    private readonly float[] _dq = new float[heads * n * d], _dk = new float[heads * n * d], _dv = new float[heads * n * d];

    /// <summary>One inference forward (no log-sum-exp kept); the output buffer is reused and returned.</summary>
    public float[] Forward()
    {
        ExactAttention.Compute(q, k, v, _shape, _output, _options);
        return _output;
    }

    /// <summary>One forward and backward; the buffers (output, dQ, dK, dV) are reused and returned.</summary>
    public (float[] O, float[] Dq, float[] Dk, float[] Dv) Run()
    {
        float[] gradient = outputGradient ?? throw new InvalidOperationException("OursPeer: the training step needs an output gradient");
        ExactAttention.Compute(q, k, v, _shape, _output, _lse, _options);
        ExactAttention.Backward(q, k, v, _output, gradient, _lse, _shape, _dq, _dk, _dv, _options);
        return (_output, _dq, _dk, _dv);
    }
}
