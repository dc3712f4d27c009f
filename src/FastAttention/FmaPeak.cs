using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// Measures this machine's fp32 FMA peak (the denominator of every %-of-peak figure): 12
/// independent chains of the widest accelerated vector FMA per thread, enough to hide the FMA
/// latency on two pipes, all threads at once.
/// </summary>
public static class FmaPeak
{
    private static readonly Dictionary<int, double> Cache = [];

    /// <summary>GFLOP/s of <paramref name="threads"/> threads running FMA chains for about <paramref name="milliseconds"/> each.</summary>
    public static double Measure(int threads, int milliseconds = 150)
    {
        lock (Cache)
        {
            if (Cache.TryGetValue(threads, out double cached))
            {
                return cached;
            }
        }

        // Dedicated threads released together: a Parallel.For over `threads` items may run them one
        // after another on fewer threads and understate the peak.
        double[] perThread = new double[threads];
        using var start = new Barrier(threads);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int index = t;
            workers[t] = new Thread(() =>
            {
                Chains(2000); // warm-up and JIT
                start.SignalAndWait();
                long flops = 0;
                var watch = Stopwatch.StartNew();
                while (watch.ElapsedMilliseconds < milliseconds)
                {
                    flops += Chains(200_000);
                }

                perThread[index] = flops / watch.Elapsed.TotalSeconds / 1e9;
            })
            { IsBackground = true };
            workers[t].Start();
        }

        foreach (Thread worker in workers)
        {
            worker.Join();
        }

        double total = perThread.Sum();
        lock (Cache)
        {
            Cache[threads] = total;
        }

        return total;
    }

    private static long Chains(int iterations) => Vector512.IsHardwareAccelerated
        ? Chains<Simd512, Vector512<float>>(iterations)
        : Chains<Simd256, Vector256<float>>(iterations);

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static long Chains<TS, TV>(int iterations)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        TV a = TS.Broadcast(0.999999f), b = TS.Broadcast(1e-7f);
        TV c0 = b, c1 = b, c2 = b, c3 = b, c4 = b, c5 = b, c6 = b, c7 = b, c8 = b, c9 = b, c10 = b, c11 = b;
        for (int i = 0; i < iterations; i++)
        {
            c0 = TS.MultiplyAdd(c0, a, b);
            c1 = TS.MultiplyAdd(c1, a, b);
            c2 = TS.MultiplyAdd(c2, a, b);
            c3 = TS.MultiplyAdd(c3, a, b);
            c4 = TS.MultiplyAdd(c4, a, b);
            c5 = TS.MultiplyAdd(c5, a, b);
            c6 = TS.MultiplyAdd(c6, a, b);
            c7 = TS.MultiplyAdd(c7, a, b);
            c8 = TS.MultiplyAdd(c8, a, b);
            c9 = TS.MultiplyAdd(c9, a, b);
            c10 = TS.MultiplyAdd(c10, a, b);
            c11 = TS.MultiplyAdd(c11, a, b);
        }

        TV sum = TS.Add(TS.Add(TS.Add(c0, c1), TS.Add(c2, c3)), TS.Add(TS.Add(TS.Add(c4, c5), TS.Add(c6, c7)), TS.Add(TS.Add(c8, c9), TS.Add(c10, c11))));
        Sink = TS.SumAcross(sum);
        return 12L * 2 * TS.Count * iterations;
    }

    /// <summary>Keeps the chains' results alive so the JIT cannot drop them.</summary>
    private static float Sink { get; set; }
}
