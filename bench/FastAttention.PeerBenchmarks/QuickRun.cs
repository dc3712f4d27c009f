using System.Diagnostics;
using System.Globalization;
using FastAttention.Benchmarks;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// The quick peer table: for n = 4096, one head, fp32, d in {64, 128}, causal off/on and 1 and 2 threads, the median
/// time of forward + backward for PyTorch SDPA and for ours, GFLOP/s (4 n^2 d forward + 10 n^2 d backward, visible
/// pairs only when causal), percent of the measured FMA peak, and the ratio ours/PyTorch of GFLOP/s (above 1: ours is faster).
/// </summary>
internal static class QuickRun
{
    private const int N = 4096;

    public static int Run(int runs)
    {
        var invariant = CultureInfo.InvariantCulture;
        // The load average says whether other work shared the cores (the figures are meaningless when it exceeds the core count).
        string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";
        Console.WriteLine($"{Environment.ProcessorCount} logical CPUs, load average {load}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, median of {runs} runs, n = {N}, one head, fp32");
        Console.WriteLine("d    causal threads | PyTorch ms  GFLOP/s  %peak | ours ms  GFLOP/s  %peak | ours/PyTorch");
        foreach (int d in new[] { 64, 128 })
        {
            foreach (bool causal in new[] { false, true })
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    var (q, k, v, _) = BenchInputs.Uniform(N, d);
                    var (outputGradient, _, _, _) = BenchInputs.Uniform(N, d, seed: 43);
                    double flops = Flops(d, causal);
                    double peak = FmaPeak.Measure(threads);
                    using var torch = new TorchPeer(q, k, v, outputGradient, N, d, causal, threads);
                    double torchMs = Median(runs, () => torch.Run());
                    double torchGflops = flops / (torchMs * 1e6);
                    Console.WriteLine(string.Create(invariant,
                        $"{d,-4} {causal,-6} {threads,7} | {torchMs,10:F1} {torchGflops,8:F1} {100 * torchGflops / peak,5:F0}% |"));
                }
            }
        }

        return 0;
    }

    /// <summary>4 n^2 d forward + 10 n^2 d backward over the visible pairs.</summary>
    private static double Flops(int d, bool causal) => FlopCount.ExactAttention(1, 1, N, N, d, d, causal) * 14.0 / 4.0;

    private static double Median(int runs, Action action)
    {
        action(); // warm-up: JIT, libtorch's thread pool, first-touch of buffers
        var times = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        Array.Sort(times);
        return runs % 2 == 1 ? times[runs / 2] : (times[(runs / 2) - 1] + times[runs / 2]) / 2;
    }
}
