using System.Diagnostics;
using System.Globalization;
using FastAttention.Benchmarks;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// The quick peer tables, n = 4096, fp32, d in {64, 128}, causal off/on, 1 and 2 threads: the inference forward
/// (1 and 8 heads) of ONNX Runtime's MultiHeadAttention, PyTorch's SDPA and ours, then forward + backward (one head)
/// of PyTorch's SDPA with autograd and ours. Each row: median time, GFLOP/s (4 n^2 d per head forward + 10 n^2 d
/// backward, visible pairs only when causal), percent of the FMA peak measured beside it, and each peer's time over
/// ours (above 1: ours is faster). Every row also checks that the outputs (and gradients) agree.
/// </summary>
internal static class QuickRun
{
    private const int N = 4096;

    public static int Run(int runs)
    {
        // The load average says whether other work shared the cores (the figures are meaningless when it exceeds the core count).
        string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";
        Console.WriteLine($"{Environment.ProcessorCount} logical CPUs, load average {load}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, median of {runs} runs, n = {N}, fp32");
        bool failed = !Forward(runs);
        failed |= !Training(runs);
        Console.WriteLine("FMA peak measured by FastAttention.FmaPeak.Measure beside each row; flops 4 n^2 d per head forward + 10 n^2 d backward (visible pairs).");
        return failed ? 1 : 0;
    }

    /// <summary>The inference forward: ours, ONNX Runtime's MultiHeadAttention and PyTorch's SDPA (no autograd), 1 and 8 heads.</summary>
    private static bool Forward(int runs)
    {
        Console.WriteLine("forward");
        Console.WriteLine("heads d    causal threads | ORT ms   GFLOP/s  %peak | PyTorch ms  GFLOP/s  %peak | ours ms  GFLOP/s  %peak | ORT/ours PyTorch/ours");
        bool ok = true;
        foreach (int heads in new[] { 1, 8 })
        {
            foreach (int d in new[] { 64, 128 })
            {
                foreach (bool causal in new[] { false, true })
                {
                    foreach (int threads in new[] { 1, 2 })
                    {
                        var (q, k, v, _) = BenchInputs.Uniform(heads * N, d);
                        double flops = FlopCount.ExactAttention(1, heads, N, N, d, d, causal);
                        double peak = FmaPeak.Measure(threads);
                        using var ort = new OrtPeer(q, k, v, N, heads, d, causal, threads);
                        double ortMs = Median(runs, ort.Run);
                        using var torch = new TorchPeer(q, k, v, null, N, d, causal, threads, heads);
                        double torchMs = Median(runs, () => torch.Forward());
                        var ours = new OursPeer(q, k, v, null, N, d, causal, threads, heads);
                        double oursMs = Median(runs, () => ours.Forward());
                        Console.WriteLine(string.Create(Invariant,
                            $"{heads,5} {d,-4} {causal,-6} {threads,7} | {Cells(ortMs, flops, peak, 6)} | {Cells(torchMs, flops, peak, 10)} | {Cells(oursMs, flops, peak, 7)} | {ortMs / oursMs,8:F2} {torchMs / oursMs,12:F2}"));
                        string check = Check(["O"], [ours.Forward()], [ort.Output()], "ONNX Runtime");
                        check += Check(["O"], [ours.Forward()], [torch.Forward(copy: true)!], "PyTorch");
                        if (check.Length > 0)
                        {
                            Console.WriteLine("  " + check);
                            ok = false;
                        }
                    }
                }
            }
        }

        Console.WriteLine("ORT/ours, PyTorch/ours: the peer's median time over ours (above 1: ours is faster).");
        return ok;
    }

    /// <summary>The training step on one head: forward with log-sum-exp and backward, ours against PyTorch's SDPA with autograd.</summary>
    private static bool Training(int runs)
    {
        Console.WriteLine("forward + backward, one head");
        Console.WriteLine("d    causal threads | PyTorch ms  GFLOP/s  %peak | ours ms  GFLOP/s  %peak | PyTorch/ours");
        bool ok = true;
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
                    var ours = new OursPeer(q, k, v, outputGradient, N, d, causal, threads);
                    double oursMs = Median(runs, () => ours.Run());
                    Console.WriteLine(string.Create(Invariant,
                        $"{d,-4} {causal,-6} {threads,7} | {Cells(torchMs, flops, peak, 10)} | {Cells(oursMs, flops, peak, 7)} | {torchMs / oursMs,12:F2}"));
                    var a = ours.Run();
                    var b = torch.Run(copy: true)!.Value;
                    string check = Check(["O", "dQ", "dK", "dV"], [a.O, a.Dq, a.Dk, a.Dv], [b.O, b.Dq, b.Dk, b.Dv], "PyTorch");
                    if (check.Length > 0)
                    {
                        Console.WriteLine("  " + check);
                        ok = false;
                    }
                }
            }
        }

        Console.WriteLine("PyTorch/ours: PyTorch's median time over ours (above 1: ours is faster).");
        return ok;
    }

    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>Milliseconds, GFLOP/s and percent of the peak, the first right-aligned to <paramref name="width"/>.</summary>
    private static string Cells(double ms, double flops, double peak, int width)
    {
        double gflops = flops / (ms * 1e6);
        return string.Create(Invariant, $"{ms.ToString("F1", Invariant).PadLeft(width)} {gflops,8:F1} {100 * gflops / peak,5:F0}%");
    }

    /// <summary>Identical inputs give the same results within fp32 accuracy: empty when every output and gradient agrees to 1e-3 relative to the peer's largest entry.</summary>
    private static string Check(string[] names, float[][] ours, float[][] peer, string peerName)
    {
        var bad = new List<string>();
        for (int t = 0; t < names.Length; t++)
        {
            double scale = Math.Max(peer[t].Max(Math.Abs), 1e-30);
            double diff = ours[t].Zip(peer[t], (x, y) => Math.Abs(x - y)).Max() / scale;
            if (!(diff <= 1e-3))
            {
                bad.Add(string.Create(Invariant, $"{names[t]} differs from {peerName}'s by {NumberText.Format(diff)} of its largest entry"));
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
