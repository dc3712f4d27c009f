using System.Diagnostics;
using System.Globalization;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn bench</c>: times a method on seeded random inputs (or given files): warm-up, then the
/// median of repeated runs, with GFLOP/s and %-of-peak against this machine's measured FMA peak.
/// </summary>
internal static class BenchCommand
{
    public static Command Command { get; } = new(
        "bench",
        "time a method on seeded random inputs: median of repeated runs, GFLOP/s, %-of-peak",
        [
            new("method", "M", "exact (default); poly (polynomial method) or sketch (sketched degree-4), with GFLOP/s effective: exact flops per second; tensor (exact tensor attention, 4 n^3 d flops) or tensor-poly (its polynomial method, effective GFLOP/s) on random Q, K1, K2, V1, V2; gemm: the GEMM alone, m = n = k = --n; leverage: leverage scores of n x d Gaussian keys (fast, exact, sketched) against K^T K on the project's GEMM"),
            new("n", "N", "queries (and keys, unless --nk) per head (required unless --q is given)"),
            new("nk", "NK", "keys per head (default n)"),
            new("d", "D", "head dimension (default 64)"),
            new("dv", "DV", "value dimension (default d)"),
            new("heads", "H", "query heads (default 1)"),
            new("kv-heads", "HKV", "key/value heads for grouped-query attention (default: heads)"),
            new("batch", "B", "batch size (default 1)"),
            new("causal", null, "causal mask (flops count only the visible pairs)"),
            new("scale", "S", "score scale (default 1/sqrt(d))"),
            new("threads", "T", "worker threads (default: all cores)"),
            new("kernel", "NAME", "force a kernel: " + string.Join(", ", AttentionKernels.Names)),
            new("repeat", "R", "timed runs (default: as many as fit in about 2 s, at least 3, at most 50)"),
            new("seed", "S", "random seed (default 1)"),
            new("q", "Q.npy", "use these queries instead of random ones (with --k and --v)"),
            new("k", "K.npy", "keys"),
            new("v", "V.npy", "values"),
            new("out", "O.npy", "write the output of the last run"),
            new("force", null, "overwrite --out if it exists"),
            new("eps", "E", "poly: target relative error of the polynomial (default 1e-3)"),
            new("sketch", "M", "sketch: sketch size m (default 32)"),
            new("bandwidth", null, "also measure the machine's read bandwidth and report the input GB/s against it (decoding is memory-bound)"),
            new("json", null, "print one JSON object"),
        ],
        Run);

    private static readonly string[] AttentionMethods = ["exact", "poly", "sketch", "tensor", "tensor-poly"];

    private static readonly string[] Methods = [.. AttentionMethods, "gemm", "leverage"];

    /// <summary>The options that belong to some methods only, and those methods (gemm takes --n; leverage --n and --d).</summary>
    private static readonly (string Option, string[] Methods)[] MethodOptions =
    [
        ("kernel", ["exact"]),
        ("eps", ["poly", "tensor-poly"]),
        ("sketch", ["sketch"]),
        ("d", [.. AttentionMethods, "leverage"]),
        .. new[] { "nk", "dv", "heads", "kv-heads", "batch", "causal", "scale", "q", "k", "v", "out", "force", "bandwidth" }
            .Select(option => (option, AttentionMethods)),
    ];

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string method = o.Get("method") ?? "exact";
        if (!Methods.Contains(method))
        {
            throw new UsageException($"bench: unknown --method '{method}' (available: {string.Join(", ", Methods)})");
        }

        o.RejectOptionsOfOtherMethods("bench", method, MethodOptions);
        if (method == "gemm")
        {
            return RunGemm(o, stdout);
        }

        if (method == "leverage")
        {
            return RunLeverage(o, stdout);
        }

        int threads = o.Int("threads", 1, 1024) ?? Environment.ProcessorCount;
        int? repeat = o.Int("repeat", 1, 100_000);
        string? outPath = o.Get("out");
        bool force = o.Flag("force");
        if (outPath is not null)
        {
            TensorFiles.CheckTensorOutput(o, "out");
        }

        (AttentionShape shape, float[] q, float[] k, float[] v, int[] outShape) = Inputs(o);
        var output = new float[shape.OutputLength];
        var options = new ExactAttentionOptions
        {
            Scale = o.Float("scale"),
            Causal = o.Flag("causal"),
            MaxDegreeOfParallelism = threads,
            Kernel = o.Get("kernel"),
        };

        // The polynomial method is timed the same way; its GFLOP/s are effective (exact-attention flops per second).
        PolynomialCertificate? certificate = null;
        var polynomialOptions = new PolynomialAttentionOptions
        {
            Scale = options.Scale,
            Causal = options.Causal,
            RelativeError = o.Double("eps", positive: true),
            MaxDegreeOfParallelism = threads,
        };
        var sketchOptions = new SketchedAttentionOptions
        {
            Scale = options.Scale,
            Causal = options.Causal,
            SketchSize = o.Int("sketch", 1, SketchedAttention.MaxSketchSize) ?? 0,
            MaxDegreeOfParallelism = threads,
        };
        double exactFlops = FlopCount.ExactAttention(shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, options.Causal);

        // Tensor attention: K, V are K1, V1; K2, V2 are drawn from the same seed, offset.
        var tensorShape = new TensorAttentionShape(shape.BatchSize * shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim);
        ReadOnlyMemory<float>[] keys = [], values = [];
        if (method.StartsWith("tensor", StringComparison.Ordinal))
        {
            if (shape.EffectiveKeyValueHeads != shape.HeadCount)
            {
                throw new UsageException("bench: tensor attention takes one key/value head per query head (no --kv-heads)");
            }

            var extra = new Random((o.Int("seed", int.MinValue, int.MaxValue) ?? 1) + 7);
            keys = [k, Array.ConvertAll(new float[k.Length], _ => (extra.NextSingle() * 2) - 1)];
            values = [v, Array.ConvertAll(new float[v.Length], _ => (extra.NextSingle() * 2) - 1)];
            double triples = 0;
            for (long i = 0; i < shape.QueryCount; i++)
            {
                double visible = options.Causal ? Math.Clamp(i + 1 + shape.KeyCount - shape.QueryCount, 0, shape.KeyCount) : shape.KeyCount;
                triples += visible * visible;
            }

            exactFlops = 2.0 * (shape.HeadDim + shape.ValueDim) * tensorShape.HeadCount * triples;
        }

        AttentionRun Compute()
        {
            switch (method)
            {
                case "tensor":
                    return TensorAttention.Compute(q, keys, values, tensorShape, output, new TensorAttentionOptions { Scale = options.Scale, Causal = options.Causal, MaxDegreeOfParallelism = threads });
                case "tensor-poly":
                    certificate = TensorAttention.ComputePolynomial(q, keys, values, tensorShape, output, polynomialOptions);
                    return new AttentionRun("tensor-polynomial-double", exactFlops);
                case "exact":
                    return ExactAttention.Compute(q, k, v, shape, output, options);
                case "poly":
                    certificate = PolynomialAttention.Compute(q, k, v, shape, output, polynomialOptions);
                    return new AttentionRun("polynomial-double", exactFlops);
                default:
                    SketchedAttention.Compute(q, k, v, shape, output, sketchOptions);
                    return new AttentionRun("sketch-double", exactFlops);
            }
        }

        // Warm-up (JIT, buffer pool, caches), then repeated timed runs.
        var watch = Stopwatch.StartNew();
        AttentionRun run = Compute();
        double first = watch.Elapsed.TotalSeconds;
        int runs = repeat ?? (int)Math.Clamp(2.0 / Math.Max(first, 1e-6), 3, 50);
        double[] times = Timing.Repeat(() => Compute(), runs, "timing " + method);
        double median = Timing.Median(times);
        double gflops = run.Flops / median / 1e9;
        double peak = FmaPeak.Measure(threads);
        long peakWorkingSet = Process.GetCurrentProcess().PeakWorkingSet64;
        double inputBytes = 4.0 * (shape.QueryLength + shape.KeyLength + shape.ValueLength);
        double gbPerSecond = inputBytes / median / 1e9;
        double? bandwidth = o.Flag("bandwidth") ? FmaPeak.MeasureReadBandwidth(threads) : null;

        if (outPath is not null)
        {
            TensorFiles.Save(outPath, force, new TensorData<float>(output, outShape));
        }

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", method);
                w.WriteString("kernel", run.Kernel);
                w.WriteNumber("batch", shape.BatchSize);
                w.WriteNumber("heads", shape.HeadCount);
                w.WriteNumber("kvHeads", shape.EffectiveKeyValueHeads);
                w.WriteNumber("nq", shape.QueryCount);
                w.WriteNumber("nk", shape.KeyCount);
                w.WriteNumber("d", shape.HeadDim);
                w.WriteNumber("dv", shape.ValueDim);
                w.WriteBoolean("causal", options.Causal);
                w.WriteNumber("threads", threads);
                w.WriteNumber("repeats", runs);
                w.WriteNumber("medianSeconds", median);
                w.WriteNumber("minSeconds", times[0]);
                w.WriteNumber("flops", run.Flops);
                w.WriteNumber("gflops", gflops);
                w.WriteBoolean("gflopsAreEffective", method != "exact");
                w.WriteNumber("peakGflops", peak);
                w.WriteNumber("percentOfPeak", 100 * gflops / peak);
                w.WriteNumber("peakWorkingSetBytes", peakWorkingSet);
                w.WriteNumber("inputBytes", inputBytes);
                w.WriteNumber("inputGBps", gbPerSecond);
                if (certificate is not null)
                {
                    Json.WriteCertificate(w, certificate);
                }

                if (bandwidth is double bw)
                {
                    w.WriteNumber("readBandwidthGBps", bw);
                    w.WriteNumber("percentOfBandwidth", 100 * gbPerSecond / bw);
                }
            });
        }
        else
        {
            var inv = CultureInfo.InvariantCulture;
            string against = bandwidth is double b ? string.Create(inv, $" = {100 * gbPerSecond / b:F0}% of the measured {b:F1} GB/s read bandwidth") : string.Empty;
            if (certificate is not null)
            {
                stdout.WriteLine(string.Create(inv,
                    $"{method} ({run.Kernel}) b={shape.BatchSize} h={shape.HeadCount} nq={shape.QueryCount} nk={shape.KeyCount} d={shape.HeadDim}{(options.Causal ? " causal" : string.Empty)}, {threads} thread(s): median {median * 1e3:F3} ms of {runs}, {gflops:F1} effective GFLOP/s (exact-attention flops / time); degree {certificate.Degree}, {certificate.Rank} features, output bound {certificate.OutputBound:G3}"));
                return ExitCode.Ok;
            }

            if (method == "sketch")
            {
                stdout.WriteLine(string.Create(inv,
                    $"sketch ({run.Kernel}) b={shape.BatchSize} h={shape.HeadCount} nq={shape.QueryCount} nk={shape.KeyCount} d={shape.HeadDim}{(options.Causal ? " causal" : string.Empty)}, {threads} thread(s), m = {(sketchOptions.SketchSize == 0 ? SketchedAttention.DefaultSketchSize : sketchOptions.SketchSize)}: median {median * 1e3:F3} ms of {runs}, {gflops:F1} effective GFLOP/s (exact-attention flops / time)"));
                return ExitCode.Ok;
            }

            stdout.WriteLine(string.Create(inv,
                $"{method} ({run.Kernel}) b={shape.BatchSize} h={shape.HeadCount} nq={shape.QueryCount} nk={shape.KeyCount} d={shape.HeadDim}{(options.Causal ? " causal" : string.Empty)}, {threads} thread(s): median {median * 1e3:F3} ms of {runs}, {gflops:F1} GFLOP/s = {100 * gflops / peak:F0}% of the measured {peak:F0} GFLOP/s FMA peak; inputs read at {gbPerSecond:F1} GB/s{against}"));
        }

        return ExitCode.Ok;
    }

    /// <summary>
    /// Leverage scores of n x d keys (issue 6's benchmark: n = 10^6, d = 64) against the Gram matrix K^T K computed with
    /// the project's GEMM (chunks in parallel, summed in double), all in the same run: median times and ratios.
    /// </summary>
    private static int RunLeverage(ParsedOptions o, TextWriter stdout)
    {
        int n = o.Int("n", 1, int.MaxValue) ?? throw new UsageException("bench: --n is required");
        int d = o.Int("d", 1, 4096) ?? 64;
        int threads = o.Int("threads", 1, 1024) ?? Environment.ProcessorCount;
        int runs = o.Int("repeat", 1, 1000) ?? 3;
        if ((long)n * d > Array.MaxLength)
        {
            throw new UsageException($"bench: n x d = {(long)n * d} is too large for one array");
        }

        var random = new Random(o.Int("seed", int.MinValue, int.MaxValue) ?? 1);
        float[] keys = new float[(long)n * d];
        SeededGaussian.Fill(random, keys);

        double Time(Action run)
        {
            run(); // warm-up
            return Timing.Median(Timing.Repeat(run, runs, "timing leverage scores"));
        }

        double gram = Time(() => new FastAttention.Leverage.GramState(d).AddFast(keys, threads));
        double fast = Time(() => FastAttention.Leverage.LeverageScores.Compute(keys, d, FastAttention.Leverage.LeverageMethod.Fast, maxDegreeOfParallelism: threads));
        double sketched = Time(() => FastAttention.Leverage.LeverageScores.Compute(keys, d, FastAttention.Leverage.LeverageMethod.Sketched, maxDegreeOfParallelism: threads));
        double exact = Time(() => FastAttention.Leverage.LeverageScores.Compute(keys, d, FastAttention.Leverage.LeverageMethod.Exact, maxDegreeOfParallelism: threads));
        double gramFlops = 2.0 * n * d * d;
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "leverage");
                w.WriteNumber("n", n);
                w.WriteNumber("d", d);
                w.WriteNumber("threads", threads);
                w.WriteNumber("gramSeconds", gram);
                w.WriteNumber("gramGflops", gramFlops / gram / 1e9);
                w.WriteNumber("fastSeconds", fast);
                w.WriteNumber("fastOverGram", fast / gram);
                w.WriteNumber("sketchedSeconds", sketched);
                w.WriteNumber("exactSeconds", exact);
            });
        }
        else
        {
            var inv = CultureInfo.InvariantCulture;
            stdout.WriteLine(string.Create(inv, $"leverage scores, n = {n}, d = {d}, {threads} thread(s), median of {runs}:"));
            stdout.WriteLine(string.Create(inv, $"  K^T K on the project's GEMM  {gram * 1e3,9:F1} ms  ({gramFlops / gram / 1e9:F0} GFLOP/s)"));
            stdout.WriteLine(string.Create(inv, $"  scores, fast (two GEMMs)     {fast * 1e3,9:F1} ms  = {fast / gram:F2}x K^T K"));
            stdout.WriteLine(string.Create(inv, $"  scores, sketched             {sketched * 1e3,9:F1} ms  = {sketched / gram:F2}x K^T K"));
            stdout.WriteLine(string.Create(inv, $"  scores, exact (double)       {exact * 1e3,9:F1} ms  = {exact / gram:F2}x K^T K"));
        }

        return ExitCode.Ok;
    }

    /// <summary>Times <c>C = A B</c> (m = n = k = --n) on the GEMM that the attention kernel's micro-kernel comes from.</summary>
    private static int RunGemm(ParsedOptions o, TextWriter stdout)
    {
        int n = o.Int("n", 1, 65536) ?? throw new UsageException("bench: --n is required");
        int threads = o.Int("threads", 1, 1024) ?? Environment.ProcessorCount;
        var random = new Random(o.Int("seed", int.MinValue, int.MaxValue) ?? 1);
        float[] a = new float[(long)n * n], b = new float[(long)n * n], c = new float[(long)n * n];
        for (long i = 0; i < a.LongLength; i++)
        {
            a[i] = (random.NextSingle() * 2) - 1;
            b[i] = (random.NextSingle() * 2) - 1;
        }

        void Multiply() => Gemm.Multiply(n, n, n, a, false, b, false, c, 0f, threads);

        double first = Timing.Repeat(Multiply, 1)[0]; // warm-up, and the scale for the repeat count
        int runs = o.Int("repeat", 1, 100_000) ?? (int)Math.Clamp(3.0 / Math.Max(first, 1e-6), 3, 30);
        double median = Timing.Median(Timing.Repeat(Multiply, runs, "timing the GEMM"));
        double flops = 2.0 * n * n * (double)n;
        double gflops = flops / median / 1e9, peak = FmaPeak.Measure(threads);
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "gemm");
                w.WriteNumber("n", n);
                w.WriteNumber("threads", threads);
                w.WriteNumber("repeats", runs);
                w.WriteNumber("medianSeconds", median);
                w.WriteNumber("flops", flops);
                w.WriteNumber("gflops", gflops);
                w.WriteBoolean("gflopsAreEffective", false);
                w.WriteNumber("peakGflops", peak);
                w.WriteNumber("percentOfPeak", 100 * gflops / peak);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"gemm m = n = k = {n}, {threads} thread(s): median {median * 1e3:F2} ms of {runs}, {gflops:F1} GFLOP/s = {100 * gflops / peak:F0}% of the measured {peak:F0} GFLOP/s FMA peak"));
        }

        return ExitCode.Ok;
    }

    private static (AttentionShape Shape, float[] Q, float[] K, float[] V, int[] OutShape) Inputs(ParsedOptions o)
    {
        if (o.Get("q") is string qPath)
        {
            TensorData<float> qt = TensorFiles.Load("q", qPath);
            TensorData<float> kt = TensorFiles.Load("k", o.Required("bench", "k"));
            TensorData<float> vt = TensorFiles.Load("v", o.Required("bench", "v"));
            AttentionShape fromFiles = AttentionInputs.Shape(qt, kt, vt);
            return (fromFiles, qt.Data, kt.Data, vt.Data, AttentionInputs.OutputShape(qt, fromFiles));
        }

        int n = o.Int("n", 1, int.MaxValue) ?? throw new UsageException("bench: --n is required (or give --q, --k, --v)");
        int d = o.Int("d", 1, 65536) ?? 64;
        int heads = o.Int("heads", 1, 65536) ?? 1;
        var shape = new AttentionShape(
            o.Int("batch", 1, 65536) ?? 1,
            heads,
            n,
            o.Int("nk", 1, int.MaxValue) ?? n,
            d,
            o.Int("dv", 1, 65536) ?? d,
            o.Int("kv-heads", 1, 65536) ?? heads);
        if (shape.QueryLength > Array.MaxLength || shape.KeyLength > Array.MaxLength || shape.ValueLength > Array.MaxLength || shape.OutputLength > Array.MaxLength)
        {
            throw new UsageException($"bench: ({shape}) is too large for one array");
        }

        var random = new Random(o.Int("seed", int.MinValue, int.MaxValue) ?? 1);
        float[] Fill(long count)
        {
            var data = new float[count];
            for (long i = 0; i < count; i++)
            {
                data[i] = (random.NextSingle() * 2) - 1;
            }

            return data;
        }

        return (shape, Fill(shape.QueryLength), Fill(shape.KeyLength), Fill(shape.ValueLength),
            [shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.ValueDim]);
    }
}
