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

/// <summary>
/// Training with the polynomial method at n = 4096, d = dv = 16, entries uniform in [-1, 1], scale 1/d, degree 2 to 4 forced
/// (r = 153, 969, 4845), causal off and on, two threads: the shape and inputs of <see cref="PolynomialForwardBench"/>
/// and <see cref="PolynomialBackwardBench"/>, whose GFLOP/s are the method's own predicted flops over time.
/// </summary>
public abstract class PolynomialTrainingShape
{
    protected float[] _q = [], _k = [], _v = [], _o = [], _dO = [], _dq = [], _dk = [], _dv = [];

    [Params(4096)]
    public int N { get; set; }

    [Params(16)]
    public int D { get; set; }

    [Params(2, 3, 4)]
    public int Degree { get; set; }

    [Params(false, true)]
    public bool Causal { get; set; }

    [Params(2)]
    public int Threads { get; set; }

    protected AttentionShape Shape => AttentionShape.SingleHead(N, D);

    /// <summary>Scale 1/d, as <see cref="PolynomialBench"/>: R = 0.63 here, where degree 2 still has relative error below 1.</summary>
    protected PolynomialAttentionOptions Options => new() { Scale = 1f / D, Degree = Degree, Causal = Causal, MaxDegreeOfParallelism = Threads };

    [GlobalSetup]
    public void Setup()
    {
        (_q, _k, _v, _o) = BenchInputs.Uniform(N, D);
        (_dO, _dq, _dk, _dv) = BenchInputs.Uniform(N, D, seed: 7);
    }

    protected static (AttentionShape Shape, long Rank) Case(IReadOnlyDictionary<string, object> p) =>
        (AttentionShape.SingleHead((int)p["N"], (int)p["D"]), PolynomialAttention.FeatureCount((int)p["D"], (int)p["Degree"]));
}

/// <summary>The forward alone (<see cref="PolynomialAttention.PredictedFlops"/>).</summary>
[Config(typeof(BenchConfig))]
public class PolynomialForwardBench : PolynomialTrainingShape, IFlopCounted
{
    [Benchmark]
    public PolynomialCertificate Forward() => PolynomialAttention.Compute(_q, _k, _v, Shape, _o, Options);

    public double Flops(IReadOnlyDictionary<string, object> p)
    {
        (AttentionShape shape, long rank) = Case(p);
        return PolynomialAttention.PredictedFlops(shape, rank);
    }
}

/// <summary>The forward and its backward, as a training step calls them (predicted flops of both).</summary>
[Config(typeof(BenchConfig))]
public class PolynomialBackwardBench : PolynomialTrainingShape, IFlopCounted
{
    [Benchmark]
    public PolynomialCertificate ForwardBackward()
    {
        PolynomialAttention.Compute(_q, _k, _v, Shape, _o, Options);
        return PolynomialAttention.Backward(_q, _k, _v, _o, _dO, Shape, _dq, _dk, _dv, Options);
    }

    public double Flops(IReadOnlyDictionary<string, object> p)
    {
        (AttentionShape shape, long rank) = Case(p);
        return PolynomialAttention.PredictedFlops(shape, rank) + PolynomialAttention.PredictedBackwardFlops(shape, rank);
    }
}
