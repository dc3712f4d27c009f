using System.Globalization;
using System.Text.Json;
using FastAttention.IO;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn bench</c>: the door to the lab's <see cref="Benchmark"/>: times a method of <see cref="MethodTable"/> on
/// seeded random inputs (or given files) and prints the measurement; gemm and leverage time the GEMM and leverage scores.
/// </summary>
internal static class BenchCommand
{
    /// <summary>Benchmarks that are not attention methods.</summary>
    private static readonly string[] Others = ["gemm", "leverage"];

    private static readonly string[] Methods = [.. MethodTable.Names, .. Others];

    /// <summary>Options of the shape and inputs, for every attention method (gemm takes --n only; leverage --n and --d).</summary>
    private static readonly string[] ShapeOptions = ["nk", "dv", "heads", "kv-heads", "batch", "q", "k", "v", "out", "force", "bandwidth"];

    /// <summary>
    /// The options that belong to some methods only, and those methods: each table method's own options (less
    /// <c>--seed</c>, which in bench draws every method's inputs) with the shape options, --d and --backward (a table method
    /// without a backward says so itself), then gemm and leverage.
    /// </summary>
    private static readonly (string Option, string[] Methods)[] OptionsOfMethods = MethodOptions.OptionTable(
    [
        .. MethodTable.All.Select(m => (m.Name, (IReadOnlyList<string>)[.. m.Options.Where(o => o != "seed"), "d", "backward", .. ShapeOptions])),
        ("gemm", []),
        ("leverage", ["d"]),
    ]).Append(("kv-dtype", ["exact"])).ToArray();

    public static Command Command { get; } = new(
        "bench",
        "time a method on seeded random inputs: median of repeated runs, GFLOP/s, %-of-peak",
        [
            new("method", "M", string.Join("; ", MethodTable.All.Select(m => $"{m.Name}: {m.Summary}")) + "; gemm: the GEMM alone, m = n = k = --n; leverage: leverage scores of n x d Gaussian keys (fast, exact, sketched) against K^T K on the project's GEMM (default exact). GFLOP/s count the method's own flops; approximate methods also report effective GFLOP/s (the exact computation's flops over the same time)") { Values = Methods },
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
            new("seed", "S", "random seed of the inputs (default 1)"),
            new("q", "Q.npy", "use these queries instead of random ones (with --k and --v)"),
            new("k", "K.npy", "keys"),
            new("v", "V.npy", "values"),
            new("out", "O.npy", "write the output of the last run"),
            new("force", null, "overwrite --out if it exists"),
            new("eps", "E", "poly, tensor-poly: target relative error of the polynomial (default 1e-3); lev: keep each head's universal set {j : leverage score >= E}"),
            new("degree", "G", "poly, tensor-poly: force the polynomial degree"),
            new("sketch", "M", "sketch: sketch size m (default 32)"),
            new("top", "N", "lev: keep each head's N keys with the largest leverage scores"),
            new("keep-first", "F", "lev: always keep the first F keys"),
            new("keep-last", "L", "lev: always keep the last L keys"),
            new("power", "P", "power: the exponent p (default 2)"),
            new("backward", null, "time the training forward and backward together (methods with a backward: " + string.Join(", ", MethodTable.WithBackward) + "): medianSeconds and GFLOP/s are of the pair, and the backward alone is reported beside them"),
            new("bandwidth", null, "also read the same inputs with a plain summing loop (same threads, same number of passes) and report the method's input GB/s against the faster of that and the method itself, and against the machine's read bandwidth (a 1 GiB buffer summed by all cores)"),
            MethodOptions.KvDtypeOption("exact: time the call on keys and values stored as f32, f16, bf16 or q8 (random inputs rounded into it; --k/--v files read as stored when already in it); reports the stored K/V bytes' GB/s and the storage's error bound, and --bandwidth reads the same stored bytes"),
            new("json", null, "print one JSON object"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string method = o.Get("method") ?? "exact";
        if (!Methods.Contains(method))
        {
            throw new UsageException($"bench: unknown --method '{method}' (available: {string.Join(", ", Methods)})");
        }

        bool backward = o.Flag("backward");
        if (backward && MethodTable.TryFind(method) is { HasBackward: false })
        {
            throw new UsageException("bench: --backward: " + MethodTable.NoBackward(method));
        }

        o.RejectOptionsOfOtherMethods("bench", method, OptionsOfMethods);
        if (backward && o.Flag("bandwidth"))
        {
            throw new UsageException("bench: --bandwidth compares the forward's input reads; it does not apply with --backward");
        }

        KvElementType? kvType = MethodOptions.KvType(o, "bench");
        if (backward && kvType is not null)
        {
            throw new UsageException("bench: --kv-dtype times the forward on stored keys and values; it does not apply with --backward");
        }

        int seed = o.Int("seed", int.MinValue, int.MaxValue) ?? 1;
        int threads = o.Threads() ?? Environment.ProcessorCount;
        LabProgress progress = Progress.Current.ForLab();
        if (method == "gemm")
        {
            int n = o.Int("n", 1, 65536) ?? throw new UsageException("bench: --n is required");
            BenchOutput.Gemm(stdout, o.Flag("json"), Benchmark.Gemm(n, threads, seed, o.Int("repeat", 1, 100_000), progress));
            return ExitCode.Ok;
        }

        if (method == "leverage")
        {
            int n = o.Int("n", 1, int.MaxValue) ?? throw new UsageException("bench: --n is required");
            int d = o.Int("d", 1, 4096) ?? 64;
            if ((long)n * d > Array.MaxLength)
            {
                throw new UsageException($"bench: n x d = {(long)n * d} is too large for one array");
            }

            BenchOutput.Leverage(stdout, o.Flag("json"), Benchmark.LeverageScores(n, d, threads, seed, o.Int("repeat", 1, 1000) ?? 3, progress));
            return ExitCode.Ok;
        }

        MethodEntry entry = MethodTable.Find(method);

        // Every option is checked before the output and before any file is read: settings, then the inputs' options.
        // bench's --seed draws the inputs; the sketch keeps its default seed.
        MethodSettings settings = MethodOptions.Settings(o, "bench", entry, threads, sketchSeed: false);
        int? repeat = o.Int("repeat", 1, 100_000);
        AttentionShape? given = GivenShape(o);
        string? outPath = o.Get("out");
        bool force = o.Flag("force");
        if (outPath is not null)
        {
            TensorFiles.CheckTensorOutput(o, "out");
        }

        (AttentionShape shape, MethodInputs? inputs, int[] outShape, KvTensorData? keys, KvTensorData? values) = Inputs(o, entry, seed, given, kvType);
        if (entry.IsTensor && shape.EffectiveKeyValueHeads != shape.HeadCount)
        {
            throw new UsageException("bench: tensor attention takes one key/value head per query head (no --kv-heads)");
        }

        var request = new BenchmarkRequest(method, shape)
        {
            Settings = settings, Inputs = inputs, InputSeed = seed, Repeats = repeat, MeasureBandwidth = o.Flag("bandwidth"), Backward = backward,
            KvType = kvType, KvKeys = keys?.Tensor, KvValues = values?.Tensor,
        };
        BenchmarkResult result = Benchmark.Run(request, progress);
        if (outPath is not null)
        {
            TensorFiles.Save(outPath, force, new TensorData<float>(result.Output, outShape));
        }

        BenchOutput.Attention(stdout, o.Flag("json"), result);
        return ExitCode.Ok;
    }

    /// <summary>The options that set the shape of bench's own random inputs; files bring their own shape.</summary>
    private static readonly string[] ShapeOfRandomInputs = ["n", "nk", "d", "dv", "heads", "kv-heads", "batch"];

    /// <summary>
    /// The shape of the seeded random inputs from --n, --nk, --d, --dv, --heads, --kv-heads, --batch; null when the
    /// inputs come from files, which must then be all three of --q, --k, --v, with none of those shape options.
    /// </summary>
    private static AttentionShape? GivenShape(ParsedOptions o)
    {
        string[] files = [.. new[] { "q", "k", "v" }.Where(name => o.Get(name) is not null)];
        if (files.Length > 0)
        {
            if (files.Length < 3)
            {
                throw new UsageException($"bench: inputs from files need all of --q, --k, --v (got {string.Join(", ", files.Select(f => "--" + f))})");
            }

            if (ShapeOfRandomInputs.FirstOrDefault(name => o.Get(name) is not null) is string shapeOption)
            {
                throw new UsageException($"bench: --{shapeOption} sets the shape of random inputs; with --q, --k, --v the files give the shape");
            }

            return null;
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

        return shape;
    }

    /// <summary>The shape and the inputs: from --q/--k/--v files (tensor methods draw K2, V2 from the seed + 7), or null for the lab's seeded random ones of <paramref name="given"/>.</summary>
    private static (AttentionShape Shape, MethodInputs? Inputs, int[] OutShape, KvTensorData? Keys, KvTensorData? Values) Inputs(
        ParsedOptions o, MethodEntry entry, int seed, AttentionShape? given, KvElementType? kvType)
    {
        if (given is AttentionShape shape)
        {
            return (shape, null, [shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.ValueDim], null, null);
        }

        if (kvType is KvElementType type)
        {
            // Keys and values go to the typed call as read: no float32 copy of them is made.
            TensorData<float> q = TensorFiles.Load("q", o.Get("q")!);
            KvTensorData k = TensorFiles.LoadKv("k", o.Get("k")!, type), v = TensorFiles.LoadKv("v", o.Get("v")!, type);
            AttentionShape typed = AttentionInputs.Shape(q.Shape, k.Shape, v.Shape);
            return (typed, MethodInputs.Of(q.Data, ReadOnlyMemory<float>.Empty, ReadOnlyMemory<float>.Empty), AttentionInputs.OutputShape(q, typed), k, v);
        }

        TensorData<float> qt = TensorFiles.Load("q", o.Get("q")!);
        TensorData<float> kt = TensorFiles.Load("k", o.Get("k")!);
        TensorData<float> vt = TensorFiles.Load("v", o.Get("v")!);
        AttentionShape fromFiles = AttentionInputs.Shape(qt, kt, vt);
        MethodInputs inputs = MethodInputs.Of(qt.Data, kt.Data, vt.Data);
        if (entry.IsTensor)
        {
            MethodInputs extra = Benchmark.RandomInputs(fromFiles, tensor: true, seed);
            inputs = new MethodInputs(qt.Data, [kt.Data, extra.Keys[1]], [vt.Data, extra.Values[1]]);
        }

        return (fromFiles, inputs, AttentionInputs.OutputShape(qt, fromFiles), null, null);
    }
}

/// <summary>bench's printing: one JSON object (field names that scripts and tests read) or a line of text, each stating the CPU and time.</summary>
internal static class BenchOutput
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static void Attention(TextWriter stdout, bool json, BenchmarkResult r)
    {
        AttentionShape shape = r.Shape;
        if (json)
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", r.Method);
                w.WriteString("kernel", r.Kernel);
                w.WriteNumber("batch", shape.BatchSize);
                w.WriteNumber("heads", shape.HeadCount);
                w.WriteNumber("kvHeads", shape.EffectiveKeyValueHeads);
                w.WriteNumber("nq", shape.QueryCount);
                w.WriteNumber("nk", shape.KeyCount);
                w.WriteNumber("d", shape.HeadDim);
                w.WriteNumber("dv", shape.ValueDim);
                w.WriteBoolean("causal", r.Causal);
                w.WriteNumber("threads", r.Threads);
                w.WriteNumber("repeats", r.Repeats);
                w.WriteNumber("firstCallSeconds", r.FirstCallSeconds);
                w.WriteNumber("medianSeconds", r.MedianSeconds);
                w.WriteNumber("minSeconds", r.MinSeconds);
                w.WriteNumber("flops", r.Flops);
                w.WriteNumber("gflops", r.Gflops);
                NumberOrNull(w, "exactEquivalentFlops", r.ExactEquivalentFlops);
                NumberOrNull(w, "effectiveGflops", r.EffectiveGflops);

                // Kept for scripts that read it: true when the method is approximate and so has effectiveGflops ("gflops" is always its own flops).
                w.WriteNumber("peakGflops", r.PeakGflops);
                w.WriteNumber("percentOfPeak", r.PercentOfPeak);
                w.WriteNumber("peakWorkingSetBytes", r.PeakWorkingSetBytes);
                w.WriteNumber("inputBytes", r.InputBytes);
                w.WriteNumber("inputGBps", r.InputGBps);
                if (r.Run.MeanKeptKeys is double kept)
                {
                    w.WriteNumber("meanKeptKeys", kept);
                }

                if (r.Run.Certificate is not null)
                {
                    Json.WriteCertificate(w, r.Run.Certificate);
                }

                if (r.Backward is BackwardFigure back)
                {
                    // medianSeconds, flops, gflops and percentOfPeak above are of the forward-and-backward pair.
                    w.WriteString("pass", "forward+backward");
                    w.WriteString("backwardKernel", back.Kernel);
                    w.WriteNumber("forwardFlops", back.ForwardFlops);
                    w.WriteNumber("backwardFlops", back.BackwardFlops);
                    w.WriteNumber("backwardMedianSeconds", back.MedianSeconds);
                    w.WriteNumber("backwardMinSeconds", back.MinSeconds);
                    w.WriteNumber("backwardGflops", back.Gflops);
                    w.WriteNumber("backwardPercentOfPeak", back.PercentOfPeak);
                }

                if (r.Bandwidth is BandwidthFigure b)
                {
                    w.WriteNumber("plainReadGBps", b.PlainReadGBps);
                    w.WriteNumber("readBandwidthGBps", b.ReferenceGBps);
                    w.WriteString("readBandwidthReference", b.Reference);
                    w.WriteNumber("percentOfBandwidth", b.PercentOfBandwidth);
                    NumberOrNull(w, "readBandwidthMachineGBps", b.MachineReadGBps);
                    NumberOrNull(w, "percentOfMachineBandwidth", b.PercentOfMachine);
                }

                if (r.Kv is KvFigure kv)
                {
                    Json.WriteKvStorage(w, kv.Type, kv.BitsPerValue, kv.Bound);
                    w.WriteNumber("kvBytes", kv.Bytes);
                    NumberOrNull(w, "kvGBps", r.KvGBps);
                    NumberOrNull(w, "kvPercentOfMachineBandwidth", r.Bandwidth?.MachineReadGBps is double machine && machine > 0 ? 100 * r.KvGBps / machine : null);
                }

                Stamp(w, r.Machine);
            });
            return;
        }

        string head = string.Create(Inv, $"{r.Method} ({r.Kernel}) b={shape.BatchSize} h={shape.HeadCount} nq={shape.QueryCount} nk={shape.KeyCount} d={shape.HeadDim}{(r.Causal ? " causal" : string.Empty)}, {r.Threads} thread(s)");
        string rate = string.Create(Inv, $"median {r.MedianSeconds * 1e3:F3} ms of {r.Repeats}, {r.Gflops:F1} GFLOP/s (its own flops) = {r.PercentOfPeak:F0}% of the measured {r.PeakGflops:F0} GFLOP/s FMA peak");
        string effective = r.EffectiveGflops is double e ? string.Create(Inv, $"; {e:F1} effective GFLOP/s (exact flops / time)") : string.Empty;
        string detail = r.Run.Certificate is { } c ? string.Create(Inv, $"; degree {c.Degree}, {c.Rank} features, output bound {NumberText.Format(c.OutputBound)}")
            : r.Run.Sketch is { } s ? string.Create(Inv, $"; m = {s.SketchSize}")
            : r.Run.MeanKeptKeys is double kept ? string.Create(Inv, $"; {kept:F1} keys kept per head of {shape.KeyCount}")
            : string.Empty;
        string read = string.Create(Inv, $"; inputs read at {NumberText.Format(r.InputGBps)} GB/s");
        string against = r.Bandwidth is BandwidthFigure b
            ? b.Reference == "method"
                ? string.Create(Inv, $" = 100% of the fastest read measured (the method itself; a plain read of the same inputs took {NumberText.Format(b.PlainReadGBps)} GB/s)")
                : string.Create(Inv, $" = {b.PercentOfBandwidth:F0}% of a plain read of the same inputs ({NumberText.Format(b.PlainReadGBps)} GB/s, same threads and passes)")
            : string.Empty;
        if (r.Backward is BackwardFigure pass)
        {
            stdout.WriteLine(string.Create(Inv,
                $"{head}, forward + backward: median {r.MedianSeconds * 1e3:F3} ms of {r.Repeats}, {r.Gflops:F1} GFLOP/s = {r.PercentOfPeak:F0}% of the measured {r.PeakGflops:F0} GFLOP/s FMA peak{effective}{detail}; backward alone ({pass.Kernel}): median {pass.MedianSeconds * 1e3:F3} ms, {pass.Gflops:F1} GFLOP/s = {pass.PercentOfPeak:F0}% of peak"));
            stdout.WriteLine($"measured on {r.Machine}");
            return;
        }

        string machineRead = r.Bandwidth?.MachineReadGBps is double m
            ? string.Create(Inv, $"; the machine reads {NumberText.Format(m)} GB/s (1 GiB, all cores): the inputs came at {r.Bandwidth.PercentOfMachine:F0}% of that")
            : string.Empty;
        stdout.WriteLine($"{head}: {rate}{effective}{detail}{read}{against}{machineRead}");
        if (r.Kv is KvFigure stored)
        {
            stdout.WriteLine(string.Create(Inv, $"{Json.DescribeKvBound(stored.Type, stored.BitsPerValue, stored.Bound)}; {NumberText.Format(stored.Bytes / 1e6, 4)} MB of stored K/V read at {NumberText.Format(r.KvGBps, "-")} GB/s"));
        }

        stdout.WriteLine($"measured on {r.Machine}");
    }

    public static void Gemm(TextWriter stdout, bool json, GemmBenchmarkResult r)
    {
        if (json)
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "gemm");
                w.WriteNumber("n", r.N);
                w.WriteNumber("threads", r.Threads);
                w.WriteNumber("repeats", r.Repeats);
                w.WriteNumber("medianSeconds", r.MedianSeconds);
                w.WriteNumber("flops", r.Flops);
                w.WriteNumber("gflops", r.Gflops);
                w.WriteNumber("peakGflops", r.PeakGflops);
                w.WriteNumber("percentOfPeak", r.PercentOfPeak);
                Stamp(w, r.Machine);
            });
            return;
        }

        stdout.WriteLine(string.Create(Inv,
            $"gemm m = n = k = {r.N}, {r.Threads} thread(s): median {r.MedianSeconds * 1e3:F2} ms of {r.Repeats}, {r.Gflops:F1} GFLOP/s = {r.PercentOfPeak:F0}% of the measured {r.PeakGflops:F0} GFLOP/s FMA peak"));
        stdout.WriteLine($"measured on {r.Machine}");
    }

    public static void Leverage(TextWriter stdout, bool json, LeverageBenchmarkResult r)
    {
        if (json)
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "leverage");
                w.WriteNumber("n", r.N);
                w.WriteNumber("d", r.D);
                w.WriteNumber("threads", r.Threads);
                w.WriteNumber("gramSeconds", r.GramSeconds);
                w.WriteNumber("gramGflops", r.GramGflops);
                w.WriteNumber("fastSeconds", r.FastSeconds);
                w.WriteNumber("fastOverGram", r.FastSeconds / r.GramSeconds);
                w.WriteNumber("sketchedSeconds", r.SketchedSeconds);
                w.WriteNumber("exactSeconds", r.ExactSeconds);
                Stamp(w, r.Machine);
            });
            return;
        }

        stdout.WriteLine(string.Create(Inv, $"leverage scores, n = {r.N}, d = {r.D}, {r.Threads} thread(s), median of {r.Repeats}, measured on {r.Machine}:"));
        stdout.WriteLine(string.Create(Inv, $"  K^T K on the project's GEMM  {r.GramSeconds * 1e3,9:F1} ms  ({r.GramGflops:F0} GFLOP/s)"));
        stdout.WriteLine(string.Create(Inv, $"  scores, fast (two GEMMs)     {r.FastSeconds * 1e3,9:F1} ms  = {r.FastSeconds / r.GramSeconds:F2}x K^T K"));
        stdout.WriteLine(string.Create(Inv, $"  scores, sketched             {r.SketchedSeconds * 1e3,9:F1} ms  = {r.SketchedSeconds / r.GramSeconds:F2}x K^T K"));
        stdout.WriteLine(string.Create(Inv, $"  scores, exact (double)       {r.ExactSeconds * 1e3,9:F1} ms  = {r.ExactSeconds / r.GramSeconds:F2}x K^T K"));
    }

    private static void NumberOrNull(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double x)
        {
            w.WriteNumber(name, x);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    /// <summary>The CPU model and UTC time of the measurement.</summary>
    private static void Stamp(Utf8JsonWriter w, MachineStamp machine)
    {
        w.WriteString("cpu", machine.CpuModel);
        w.WriteNumber("cores", machine.Cores);
        w.WriteString("measuredUtc", machine.UtcTime.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
    }
}
