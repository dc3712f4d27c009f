using BenchmarkDotNet.Attributes;

namespace FastAttention.Benchmarks;

/// <summary>
/// Issue 4's benchmark shape: n = 65536, d = 8, entries uniform in [-1, 1], scale 1/d, eps = 1e-3, the
/// polynomial method against the exact kernel in the same run (GFLOP/s are effective: exact-attention flops
/// over time for both, so their ratio is the speed-up).
/// </summary>
[Config(typeof(BenchConfig))]
public class PolynomialBench : IFlopCounted
{
    private float[] _q = [], _k = [], _v = [], _o = [];

    [Params(65536)]
    public int N { get; set; }

    [Params(8)]
    public int D { get; set; }

    [Params(2)]
    public int Threads { get; set; }

    private AttentionShape Shape => AttentionShape.SingleHead(N, D);

    [GlobalSetup]
    public void Setup()
    {
        (_q, _k, _v, _o) = BenchInputs.Uniform(N, D);
    }

    [Benchmark(Baseline = true)]
    public void Exact() => ExactAttention.Compute(_q, _k, _v, Shape, _o, new ExactAttentionOptions { Scale = 1f / D, MaxDegreeOfParallelism = Threads });

    [Benchmark]
    public PolynomialCertificate Polynomial() => PolynomialAttention.Compute(_q, _k, _v, Shape, _o,
        new PolynomialAttentionOptions { Scale = 1f / D, RelativeError = 1e-3, MaxDegreeOfParallelism = Threads });

    public double Flops(IReadOnlyDictionary<string, object> p) =>
        FlopCount.ExactAttention(1, 1, (int)p["N"], (int)p["N"], (int)p["D"], (int)p["D"], false);
}
