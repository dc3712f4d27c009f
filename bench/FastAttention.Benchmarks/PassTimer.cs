using System.Diagnostics;
using System.Globalization;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>
/// Where the float32 tiled forward's time goes, pass by pass: a replay of <c>TiledAttention</c>'s dense (non-causal, one head,
/// d = dv) path with a Stopwatch timestamp between its passes (packing K; per query tile the query scaling, then per key tile
/// S = Q K^T, the masks, the softmax rows and O += P V; the final normalisation). It calls the kernel's own micro-kernel, masks and
/// softmax, so the passes cost what they cost in the kernel; times are summed over threads. Beside it the real kernel's time and its
/// share of the measured FMA peak. Run: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- passes [seconds per case] [v512|v256] [threads, e.g. 1,2]</c>.
/// </summary>
public static unsafe class PassTimer
{
    private static readonly string[] Passes = ["pack K", "scale Q", "S = QK^T", "masks", "softmax", "O += PV", "normalise"];

    public static void Run(string[] args)
    {
        double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 1.0;
        bool wide = !(args.Length > 2 && args[2] == "v256") && Vector512.IsHardwareAccelerated;
        int[] threadCounts = args.Length > 3 ? [.. args[3].Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture))] : [1, 2];
        Console.WriteLine($"{Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {(wide ? "v512" : "v256")} replay, {seconds} s per case");
        // FmaPeak measures once per process and thread count (it caches), here first, before any kernel has heated the core.
        var peaks = new Dictionary<int, double> { [1] = FmaPeak.Measure(1), [2] = FmaPeak.Measure(2) };
        var results = new List<(int N, int D, int Threads, double Median, double Min, double Flops)>();
        foreach (int n in new[] { 1024, 4096 })
        {
            foreach (int d in new[] { 64, 128 })
            {
                foreach (int threads in threadCounts)
                {
                    var shape = AttentionShape.SingleHead(n, d);
                    var random = new Random(7);
                    float[] Fill(long length) => [.. Enumerable.Range(0, (int)length).Select(_ => (float)((random.NextDouble() * 2) - 1))];
                    float[] q = Fill(shape.QueryLength), k = Fill(shape.KeyLength), v = Fill(shape.ValueLength), o = new float[shape.OutputLength];
                    var options = new ExactAttentionOptions { MaxDegreeOfParallelism = threads, Kernel = wide ? "tiled-v512" : "tiled-v256" };
                    (double median, double min) = Times(seconds, () => ExactAttention.Compute(q, k, v, shape, o, options));
                    double flops = FlopCount.ExactAttention(1, 1, n, n, d, d, false);
                    double[] best = [];
                    fixed (float* qp = q, kp = k, vp = v, op = o)
                    {
                        for (int repeat = 0; repeat < 7; repeat++)
                        {
                            double[] ticks = wide
                                ? Replay<Simd512, Vector512<float>>(qp, kp, vp, op, n, d, threads)
                                : Replay<Simd256, Vector256<float>>(qp, kp, vp, op, n, d, threads);
                            if (best.Length == 0 || ticks[^1] < best[^1])
                            {
                                best = ticks;
                            }
                        }
                    }

                    double ms = 1e3 / Stopwatch.Frequency;
                    double threadMs = best[..^1].Sum() * ms;
                    string shares = string.Join(", ", Passes.Select((pass, i) => string.Create(CultureInfo.InvariantCulture, $"{pass} {best[i] * ms / threads:F2} ms ({100 * best[i] / best[..^1].Sum():F1}%)")));
                    string replay = string.Create(CultureInfo.InvariantCulture, $"replay wall {best[^1] * ms:F2} ms, per thread: {shares}; untimed {(best[^1] * ms * threads) - threadMs:F2} thread-ms");
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"n={n} d={d} {threads} thr: kernel median {median:F2} ms (min {min:F2}); {replay}"));
                    results.Add((n, d, threads, median, min, flops));
                }
            }
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"FMA peak (FmaPeak.Measure): {peaks[1]:F1} GFLOP/s (1 thread), {peaks[2]:F1} GFLOP/s (2 threads)"));
        foreach ((int n, int d, int threads, double median, double min, double flops) in results)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"n={n} d={d} {threads} thr: median {median:F2} ms = {flops / median / 1e6:F1} GFLOP/s = {100 * flops / median / 1e6 / peaks[threads]:F0}% of peak; min {min:F2} ms = {100 * flops / min / 1e6 / peaks[threads]:F0}%"));
        }
    }

    private static (double Median, double Min) Times(double seconds, Action call)
    {
        call();
        call();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < 5 || (total.Elapsed.TotalSeconds < seconds && times.Count < 2000))
        {
            long start = Stopwatch.GetTimestamp();
            call();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        times.Sort();
        return (times[times.Count / 2], times[0]);
    }

    /// <summary>One dense single-head call, timed per pass: ticks per pass summed over threads, then the wall time.</summary>
    private static double[] Replay<TS, TV>(float* query, float* key, float* value, float* output, int n, int d, int threads)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        int strip = MicroKernel<TS, TV>.StripColumns, width = TS.Count, keyAlign = 4 * TS.Count;
        int paddedKeys = (n + keyAlign - 1) / keyAlign * keyAlign;
        float* keys = (float*)NativeMemory.AlignedAlloc((nuint)((long)paddedKeys * d * sizeof(float)), 64);
        var totals = new double[Passes.Length + 1];
        var states = new List<State>();
        long wall = Stopwatch.GetTimestamp();
        try
        {
            KvOperand keyStore = KvOperand.Float32(key, n, d);
            int chunks = (paddedKeys + 1023) / 1024;
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = threads }, c =>
                TiledAttention<TS, TV>.PackKeys<KvFloat32>(in keyStore, 0, keys, c * 1024, Math.Min(paddedKeys, (c + 1) * 1024)));
            totals[0] = (Stopwatch.GetTimestamp() - wall) * (double)threads;

            AttentionArgs a = AttentionArgs.FromShape(AttentionShape.SingleHead(n, d));
            a.Query = query;
            a.Key = key;
            a.Value = value;
            a.Output = output;
            a.Scale = 1f / MathF.Sqrt(d);
            int queryTile = TiledAttention<TS, TV>.QueryTile;
            int tiles = (n + queryTile - 1) / queryTile;
            ParallelWork.Run(tiles, threads, () =>
            {
                var state = new State(d);
                lock (states)
                {
                    states.Add(state);
                }

                return state;
            }, (tile, state) => Tile<TS, TV>(in a, tile * queryTile, keys, strip, width, keyAlign, state));
        }
        finally
        {
            NativeMemory.AlignedFree(keys);
        }

        totals[^1] = Stopwatch.GetTimestamp() - wall;
        foreach (State state in states)
        {
            for (int i = 1; i < Passes.Length; i++)
            {
                totals[i] += state.Ticks[i];
            }
        }

        return totals;
    }

    private static void Tile<TS, TV>(in AttentionArgs a, int i0, float* keys, int strip, int width, int keyAlign, State st)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        const int queryTile = TiledAttention<TS, TV>.QueryTile, keyTile = TiledAttention<TS, TV>.KeyTile, stride = TiledAttention<TS, TV>.ScoreStride;
        const int rowsPer = MicroKernel<TS, TV>.TallRows, chunkKeys = TiledAttention<TS, TV>.ValueChunk;
        int d = a.HeadDim, n = a.KeyCount;
        int rows = Math.Min(queryTile, a.QueryCount - i0);
        int paddedRows = Math.Min(queryTile, (rows + 23) / 24 * 24);
        float* q = st.Query, s = st.Scores, o = st.Output;
        long t = Stopwatch.GetTimestamp();
        float scale = a.Scale * VectorMath.Log2E;
        TensorPrimitives.Multiply(new ReadOnlySpan<float>(a.Query + ((long)i0 * d), rows * d), scale, new Span<float>(q, rows * d));
        new Span<float>(q + (rows * d), (paddedRows - rows) * d).Clear();
        for (int r = 0; r < paddedRows; r++)
        {
            st.Max[r] = float.NegativeInfinity;
            st.Sum[r] = 0f;
        }

        NativeMemory.Clear(o, (nuint)(paddedRows * d * sizeof(float)));
        t = Lap(st, 1, t);
        var seen = new TiledAttention<TS, TV>.Visibility(in a, i0, rows);
        for (int j0 = 0; j0 < n; j0 += keyTile)
        {
            int cols = Math.Min(keyTile, n - j0), paddedCols = (cols + keyAlign - 1) / keyAlign * keyAlign;
            for (int c = 0; c < paddedCols; c += strip)
            {
                for (int r = 0; r < paddedRows; r += rowsPer)
                {
                    MicroKernel<TS, TV>.RunStrip(d, q + (r * d), d, 1, keys + ((long)(j0 + c) * d), strip, s + (r * stride) + c, stride, null);
                }
            }

            t = Lap(st, 2, t);
            TiledAttention<TS, TV>.ApplyMasks(in a, 0, 0, i0, rows, paddedRows, j0, cols, paddedCols, in seen, s);
            t = Lap(st, 3, t);
            for (int r = 0; r < paddedRows; r++)
            {
                TiledAttention<TS, TV>.SoftmaxRow(s + (r * stride), paddedCols, ref st.Max[r], ref st.Sum[r], out st.Alpha[r]);
            }

            t = Lap(st, 4, t);
            for (int k0 = 0; k0 < cols; k0 += chunkKeys)
            {
                int chunk = Math.Min(chunkKeys, cols - k0);
                float* v = a.Value + ((long)(j0 + k0) * d);
                float* alpha = k0 == 0 ? st.Alpha : st.Ones;
                for (int c = 0; c < d; c += strip)
                {
                    for (int r = 0; r < paddedRows; r += rowsPer)
                    {
                        MicroKernel<TS, TV>.RunStrip(chunk, s + (r * stride) + k0, stride, 1, v + c, d, o + (r * d) + c, d, alpha + r);
                    }
                }
            }

            t = Lap(st, 5, t);
        }

        for (int r = 0; r < rows; r++)
        {
            TensorPrimitives.Divide(new ReadOnlySpan<float>(o + (r * d), d), st.Sum[r], new Span<float>(a.Output + ((long)(i0 + r) * d), d));
        }

        Lap(st, 6, t);
    }

    private static long Lap(State state, int pass, long since)
    {
        long now = Stopwatch.GetTimestamp();
        state.Ticks[pass] += now - since;
        return now;
    }

    /// <summary>One thread's buffers (as the kernel's scratch) and its ticks per pass.</summary>
    private sealed class State : IDisposable
    {
        public State(int d)
        {
            Query = Alloc(120 * d);
            Scores = Alloc(120 * (512 + 16));
            Output = Alloc(120 * d);
            Alpha = Alloc(120);
            Ones = Alloc(120);
            new Span<float>(Ones, 120).Fill(1f);

            // Touched once here, as the kernel's pooled buffers are: otherwise the first tile's page faults land in "scale Q".
            new Span<float>(Query, 120 * d).Clear();
            new Span<float>(Scores, 120 * (512 + 16)).Clear();
            new Span<float>(Output, 120 * d).Clear();
        }

        public double[] Ticks { get; } = new double[Passes.Length];

        public float* Query { get; }

        public float* Scores { get; }

        public float* Output { get; }

        public float* Alpha { get; }

        public float* Ones { get; }

        public float[] Max { get; } = new float[120];

        public float[] Sum { get; } = new float[120];

        public void Dispose()
        {
            NativeMemory.AlignedFree(Query);
            NativeMemory.AlignedFree(Scores);
            NativeMemory.AlignedFree(Output);
            NativeMemory.AlignedFree(Alpha);
            NativeMemory.AlignedFree(Ones);
        }

        private static float* Alloc(int floats) => (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
    }
}
