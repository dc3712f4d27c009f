using BenchmarkDotNet.Attributes;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>The exact tiled kernel over the registry, at n = 1024 and 4096 (and 1000, not a vector multiple), d = 64, one head.</summary>
[Config(typeof(BenchConfig))]
public class ExactAttentionBench : IFlopCounted
{
    private float[] _q = [], _k = [], _v = [], _o = [];

    /// <summary>The vector kernels this CPU runs (the scalar fallback is tested, not benchmarked, unless BENCH_ALL_KERNELS=1).</summary>
    public static IEnumerable<string> Kernels => KernelRegistry.For(AttentionShape.SingleHead(1000, 64))
        .Where(k => k.Name != "tiled-scalar" || Environment.GetEnvironmentVariable("BENCH_ALL_KERNELS") == "1")
        .Select(k => k.Name);

    [ParamsSource(nameof(Kernels))]
    public string Kernel { get; set; } = "";

    [Params(1000, 1024, 4096)]
    public int N { get; set; }

    [Params(64)]
    public int D { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [Params(false, true)]
    public bool Causal { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        (_q, _k, _v, _o) = BenchInputs.Uniform(N, D);
    }

    [Benchmark]
    public void Exact() => ExactAttention.Compute(_q, _k, _v, AttentionShape.SingleHead(N, D), _o,
        new ExactAttentionOptions { Kernel = Kernel, MaxDegreeOfParallelism = Threads, Causal = Causal });

    public double Flops(IReadOnlyDictionary<string, object> p) =>
        FlopCount.ExactAttention(1, 1, (int)p["N"], (int)p["N"], (int)p["D"], (int)p["D"], (bool)p["Causal"]);
}
