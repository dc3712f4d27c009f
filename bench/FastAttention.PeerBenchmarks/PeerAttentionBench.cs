using BenchmarkDotNet.Attributes;
using FastAttention.Benchmarks;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// Forward + backward of exact attention, ours (<see cref="ExactAttention.Compute(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, ExactAttentionOptions)"/>
/// with log-sum-exp, then <c>ExactAttention.Backward</c>) against PyTorch's SDPA with autograd, n = 4096, one head, fp32,
/// on identical inputs. The %peak column uses the benchmark project's nominal peak; <c>--quick</c> measures it.
/// </summary>
[Config(typeof(BenchConfig))]
public class PeerAttentionBench : IFlopCounted
{
    private OursPeer? _ours;
    private TorchPeer? _torch;

    [Params(4096)]
    public int N { get; set; }

    [Params(64, 128)]
    public int D { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [Params(false, true)]
    public bool Causal { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var (q, k, v, _) = BenchInputs.Uniform(N, D);
        var (outputGradient, _, _, _) = BenchInputs.Uniform(N, D, seed: 43);
        _ours = new OursPeer(q, k, v, outputGradient, N, D, Causal, Threads);
        _torch = new TorchPeer(q, k, v, outputGradient, N, D, Causal, Threads);
    }

    [GlobalCleanup]
    public void Cleanup() => _torch?.Dispose();

    [Benchmark(Baseline = true)]
    public void Ours() => _ours!.Run();

    [Benchmark]
    public void PyTorch() => _torch!.Run();

    public double Flops(IReadOnlyDictionary<string, object> p) => QuickRun.Flops((int)p["N"], (int)p["D"], (bool)p["Causal"]);
}
