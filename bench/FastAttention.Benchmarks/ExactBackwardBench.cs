using BenchmarkDotNet.Attributes;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>
/// The exact backward over its registry: forward with log-sum-exp plus backward (what one training step of attention costs), and the
/// backward alone, at n = 4096 (and 1000, not a vector multiple), d = 64 and 128, one head, causal or not. The GFLOP/s column counts
/// <c>10 n^2 d</c> for the backward and <c>4 n^2 d</c> more for the pair.
/// </summary>
[Config(typeof(BenchConfig))]
public class ExactBackwardBench : IFlopCounted
{
    private float[] _q = [], _k = [], _v = [], _o = [], _dO = [], _lse = [], _dq = [], _dk = [], _dv = [];

    /// <summary>The vector backward kernels this CPU runs (the scalar one is tested, not benchmarked, unless BENCH_ALL_KERNELS=1).</summary>
    public static IEnumerable<string> Kernels => KernelRegistry.Backward
        .Where(k => k.IsSupported() && (k.Name != "tiled-scalar" || Environment.GetEnvironmentVariable("BENCH_ALL_KERNELS") == "1"))
        .Select(k => k.Name);

    [ParamsSource(nameof(Kernels))]
    public string Kernel { get; set; } = "";

    [Params(1000, 4096)]
    public int N { get; set; }

    [Params(64, 128)]
    public int D { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [Params(false, true)]
    public bool Causal { get; set; }

    private ExactAttentionOptions Options => new() { Kernel = Kernel, MaxDegreeOfParallelism = Threads, Causal = Causal };

    [GlobalSetup]
    public void Setup()
    {
        (_q, _k, _v, _o) = BenchInputs.Uniform(N, D);
        (_dO, _, _, _) = BenchInputs.Uniform(N, D, seed: 7);
        _lse = new float[N];
        _dq = new float[N * D];
        _dk = new float[N * D];
        _dv = new float[N * D];
        ExactAttention.Compute(_q, _k, _v, AttentionShape.SingleHead(N, D), _o, _lse, Options);
    }

    /// <summary>Forward (with log-sum-exp) and backward: one training step's attention.</summary>
    [Benchmark]
    public void ForwardBackward()
    {
        var shape = AttentionShape.SingleHead(N, D);
        ExactAttention.Compute(_q, _k, _v, shape, _o, _lse, Options);
        ExactAttention.Backward(_q, _k, _v, _o, _dO, _lse, shape, _dq, _dk, _dv, Options);
    }

    [Benchmark]
    public void Backward() => ExactAttention.Backward(_q, _k, _v, _o, _dO, _lse, AttentionShape.SingleHead(N, D), _dq, _dk, _dv, Options);

    public double Flops(IReadOnlyDictionary<string, object> p) =>
        FlopCount.ExactAttentionBackward(1, 1, (int)p["N"], (int)p["N"], (int)p["D"], (int)p["D"], (bool)p["Causal"]);

    public double Flops(string method, IReadOnlyDictionary<string, object> p) => Flops(p) +
        (method == nameof(ForwardBackward) ? FlopCount.ExactAttention(1, 1, (int)p["N"], (int)p["N"], (int)p["D"], (int)p["D"], (bool)p["Causal"]) : 0);
}
