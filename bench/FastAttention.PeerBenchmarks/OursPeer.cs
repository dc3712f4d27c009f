namespace FastAttention.PeerBenchmarks;

/// <summary>Our training step on one head: <see cref="ExactAttention"/>'s forward with log-sum-exp, then its backward.</summary>
internal sealed class OursPeer(float[] q, float[] k, float[] v, float[] outputGradient, int n, int d, bool causal, int threads)
{
    private readonly AttentionShape _shape = AttentionShape.SingleHead(n, d);
    private readonly ExactAttentionOptions _options = new() { Causal = causal, MaxDegreeOfParallelism = threads };
    private readonly float[] _output = new float[n * d], _lse = new float[n];
    private readonly float[] _dq = new float[n * d], _dk = new float[n * d], _dv = new float[n * d];

    /// <summary>One forward and backward; the buffers (output, dQ, dK, dV) are reused and returned.</summary>
    public (float[] O, float[] Dq, float[] Dk, float[] Dv) Run()
    {
        ExactAttention.Compute(q, k, v, _shape, _output, _lse, _options);
        ExactAttention.Backward(q, k, v, _output, outputGradient, _lse, _shape, _dq, _dk, _dv, _options);
        return (_output, _dq, _dk, _dv);
    }
}
