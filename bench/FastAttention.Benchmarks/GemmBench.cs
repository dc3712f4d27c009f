using BenchmarkDotNet.Attributes;

namespace FastAttention.Benchmarks;

/// <summary>The GEMM on the shared micro-kernel, C = A B with m = n = k = N (1000 is not a multiple of the tile).</summary>
[Config(typeof(BenchConfig))]
public class GemmBench : IFlopCounted
{
    private float[] _a = [], _b = [], _c = [];

    [Params(1000, 1024, 2048)]
    public int N { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(42);
        _a = [.. Enumerable.Range(0, N * N).Select(_ => (random.NextSingle() * 2) - 1)];
        _b = [.. Enumerable.Range(0, N * N).Select(_ => (random.NextSingle() * 2) - 1)];
        _c = new float[N * N];
    }

    [Benchmark]
    public void Multiply() => Gemm.Multiply(N, N, N, _a, false, _b, false, _c, 0f, Threads);

    public double Flops(IReadOnlyDictionary<string, object> p) => 2.0 * (int)p["N"] * (int)p["N"] * (double)(int)p["N"];
}
