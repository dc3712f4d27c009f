using BenchmarkDotNet.Attributes;
using FastAttention.Benchmarks;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// The inference forward of exact attention, in process and on identical inputs: ours
/// (<see cref="ExactAttention"/>, the baseline), ONNX Runtime's fused <c>com.microsoft</c> <c>MultiHeadAttention</c>
/// (Microsoft.ML.OnnxRuntime 1.31.1) and PyTorch's SDPA without autograd (TorchSharp), n = 4096, fp32, 1 and 8 heads.
/// BenchmarkDotNet's Ratio column is each method's mean time over ours: above 1, the peer is slower.
/// </summary>
[Config(typeof(BenchConfig))]
public class PeerForwardBench : IFlopCounted
{
    private OursPeer? _ours;
    private OrtPeer? _ort;
    private TorchPeer? _torch;

    [Params(4096)]
    public int N { get; set; }

    [Params(1, 8)]
    public int Heads { get; set; }

    [Params(64, 128)]
    public int D { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [Params(false, true)]
    public bool Causal { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var (q, k, v, _) = BenchInputs.Uniform(Heads * N, D);
        _ours = new OursPeer(q, k, v, null, N, D, Causal, Threads, Heads);
        _ort = new OrtPeer(q, k, v, N, Heads, D, Causal, Threads);
        _torch = new TorchPeer(q, k, v, null, N, D, Causal, Threads, Heads);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _ort?.Dispose();
        _torch?.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void Ours() => _ours!.Forward();

    [Benchmark]
    public void OnnxRuntime() => _ort!.Run();

    [Benchmark]
    public void PyTorch() => _torch!.Forward();

    public double Flops(IReadOnlyDictionary<string, object> p) =>
        FlopCount.ExactAttention(1, (int)p["Heads"], (int)p["N"], (int)p["N"], (int)p["D"], (int)p["D"], (bool)p["Causal"]);
}
