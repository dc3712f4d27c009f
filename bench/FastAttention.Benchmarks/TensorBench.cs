using BenchmarkDotNet.Attributes;

namespace FastAttention.Benchmarks;

/// <summary>
/// Issue 5's shapes: the exact tensor kernel at n = 1024, d = 64 (GFLOP/s count 4 n^3 d), and the polynomial
/// method at n = 8192, d = 4, entries in [-1, 1] (GFLOP/s effective: exact flops over time). The exact kernel at
/// n = 8192 takes minutes, so its same-run comparison is in `fastattn experiment tensor --full`.
/// </summary>
[Config(typeof(BenchConfig))]
public class TensorBench : IFlopCounted
{
    private float[] _q = [], _k1 = [], _k2 = [], _v1 = [], _v2 = [], _o = [];

    [Params("exact-1024x64", "poly-8192x4")]
    public string Case { get; set; } = "";

    [Params(1, 2)]
    public int Threads { get; set; }

    private (int N, int D) Size => Case == "exact-1024x64" ? (1024, 64) : (8192, 4);

    private TensorAttentionShape Shape => new(1, Size.N, Size.N, Size.D, Size.D);

    [GlobalSetup]
    public void Setup()
    {
        (_q, _k1, _v1, _o) = BenchInputs.Uniform(Size.N, Size.D);
        (_, _k2, _v2, _) = BenchInputs.Uniform(Size.N, Size.D, seed: 43);
    }

    [Benchmark]
    public void Tensor()
    {
        if (Case.StartsWith("exact", StringComparison.Ordinal))
        {
            TensorAttention.Compute(_q, [_k1, _k2], [_v1, _v2], Shape, _o, new TensorAttentionOptions { MaxDegreeOfParallelism = Threads });
        }
        else
        {
            TensorAttention.ComputePolynomial(_q, [_k1, _k2], [_v1, _v2], Shape, _o, new PolynomialAttentionOptions { RelativeError = 1e-3, MaxDegreeOfParallelism = Threads });
        }
    }

    public double Flops(IReadOnlyDictionary<string, object> p)
    {
        (int n, int d) = (string)p["Case"] == "exact-1024x64" ? (1024, 64) : (8192, 4);
        return 4.0 * n * (double)n * n * d;
    }
}
