using BenchmarkDotNet.Attributes;
using FastAttention.Leverage;

namespace FastAttention.Benchmarks;

/// <summary>
/// Issue 6's benchmark: leverage scores of n = 10^6 keys of d = 64 against the Gram matrix K^T K on the project's
/// GEMM, in the same run (the goal: scores in at most 3x the Gram's time). GFLOP/s count 2 n d^2 for every case.
/// </summary>
[Config(typeof(BenchConfig))]
public class LeverageBench : IFlopCounted
{
    private float[] _k = [];

    [Params(1_000_000)]
    public int N { get; set; }

    [Params(64)]
    public int D { get; set; }

    [GlobalSetup]
    public void Setup() => (_k, _, _, _) = BenchInputs.Uniform(N, D);

    [Benchmark(Baseline = true)]
    public GramState Gram()
    {
        var gram = new GramState(D);
        gram.AddFast(_k);
        return gram;
    }

    [Benchmark]
    public double[] FastScores() => LeverageScores.Compute(_k, D, LeverageMethod.Fast);

    [Benchmark]
    public double[] SketchedScores() => LeverageScores.Compute(_k, D, LeverageMethod.Sketched);

    [Benchmark]
    public double[] ExactScores() => LeverageScores.Compute(_k, D, LeverageMethod.Exact);

    public double Flops(IReadOnlyDictionary<string, object> p) => 2.0 * (int)p["N"] * (int)p["D"] * (int)p["D"];
}
