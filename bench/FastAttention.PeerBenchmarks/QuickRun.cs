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
        bool failed = false;
        Console.WriteLine("d    causal threads | PyTorch ms  GFLOP/s  %peak | ours ms  GFLOP/s  %peak | ours/PyTorch");
        foreach (int d in new[] { 64, 128 })
        {
            foreach (bool causal in new[] { false, true })
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    var (q, k, v, _) = BenchInputs.Uniform(N, d);
                    var (outputGradient, _, _, _) = BenchInputs.Uniform(N, d, seed: 43);
                    double flops = Flops(N, d, causal);
                    double peak = FmaPeak.Measure(threads);
                    using var torch = new TorchPeer(q, k, v, outputGradient, N, d, causal, threads);
                    double torchMs = Median(runs, () => torch.Run());
                    double torchGflops = flops / (torchMs * 1e6);
                    var ours = new OursPeer(q, k, v, outputGradient, N, d, causal, threads);
                    double oursMs = Median(runs, () => ours.Run());
                    double oursGflops = flops / (oursMs * 1e6);
                    Console.WriteLine(string.Create(invariant,
                        $"{d,-4} {causal,-6} {threads,7} | {torchMs,10:F1} {torchGflops,8:F1} {100 * torchGflops / peak,5:F0}% | {oursMs,7:F1} {oursGflops,8:F1} {100 * oursGflops / peak,5:F0}% | {oursGflops / torchGflops,12:F2}"));
                    string check = Check(ours.Run(), torch.Run(copy: true)!.Value);
                    if (check.Length > 0)
                    {
                        Console.WriteLine("  " + check);
                        failed = true;
                    }
                }
            }
        }

        Console.WriteLine("FMA peak measured by FastAttention.FmaPeak.Measure beside each row; flops 4 n^2 d forward + 10 n^2 d backward (visible pairs).");
        return failed ? 1 : 0;
    }

    /// <summary>Identical inputs give the same results within fp32 accuracy: empty when every output and gradient agrees to 1e-3 relative to its largest entry.</summary>
    private static string Check((float[] O, float[] Dq, float[] Dk, float[] Dv) ours, (float[] O, float[] Dq, float[] Dk, float[] Dv) torch)
    {
        string[] names = ["O", "dQ", "dK", "dV"];
        float[][] a = [ours.O, ours.Dq, ours.Dk, ours.Dv];
        float[][] b = [torch.O, torch.Dq, torch.Dk, torch.Dv];
        var bad = new List<string>();
        for (int t = 0; t < names.Length; t++)
        {
            double scale = Math.Max(b[t].Max(Math.Abs), 1e-30);
            double diff = a[t].Zip(b[t], (x, y) => Math.Abs(x - y)).Max() / scale;
            if (!(diff <= 1e-3))
            {
                bad.Add(string.Create(CultureInfo.InvariantCulture, $"{names[t]} differs from PyTorch's by {diff:E2} of its largest entry"));
            }
        }

        return string.Join("; ", bad);
    }

    /// <summary>4 n^2 d forward + 10 n^2 d backward, over the visible pairs when causal.</summary>
    public static double Flops(int n, int d, bool causal) =>
        FlopCount.ExactAttention(1, 1, n, n, d, d, causal) + FlopCount.ExactAttentionBackward(1, 1, n, n, d, d, causal);

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
