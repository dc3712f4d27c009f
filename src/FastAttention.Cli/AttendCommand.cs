using System.Diagnostics;
using System.Globalization;
using FastAttention.IO;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary><c>fastattn attend</c>: attention over Q, K, V files, written to an output file, by any method of the lab's <see cref="MethodTable"/> with one key/value tensor.</summary>
internal static partial class AttendCommand
{
    /// <summary>The planner's choice, which attend offers besides the table's methods.</summary>
    private static readonly MethodOptions.Extra Auto = new("auto", "the planner picks exact or poly by predicted time on this machine (--kernel, which poly would ignore, is for --method exact)", ["scale", "causal", "eps"]);

    /// <summary>The table's methods over one key/value tensor, in table order.</summary>
    private static readonly MethodEntry[] Entries = [.. MethodTable.All.Where(m => !m.IsTensor)];

    /// <summary>Which methods accept each method-specific option.</summary>
    private static readonly (string Option, string[] Methods)[] OptionsOfMethods =
    [
        .. MethodOptions.OptionTable([.. Entries.Select(m => (m.Name, m.Options)), (Auto.Name, (IReadOnlyList<string>)Auto.Options)]),
        ("kv-dtype", ["exact"]),
    ];

    public static Command Command { get; } = new(
        "attend",
        "compute attention O = softmax(s Q K^T) V from .npy/.npz/.safetensors inputs",
        [
            new("q", "Q.npy", "queries [n,d], [h,n,d] or [b,h,n,d] (required)"),
            new("k", "K.npy", "keys, same rank; fewer heads for grouped-query attention (required)"),
            new("v", "V.npy", "values, K's shape with any last dimension (required)"),
            new("out", "O.npy", "output file (.npy, or .npz/.safetensors holding tensor 'out') (required)"),
            MethodOptions.MethodOption([.. Entries.Select(m => (m.Name, m.Summary)), (Auto.Name, Auto.Summary)], "exact"),
            new("eps", "E", "poly/auto: target relative error of the polynomial for e^x (default 1e-3); lev: keep each head's universal set {j : leverage score >= E}"),
            new("degree", "G", "poly: force the polynomial degree"),
            new("sketch", "M", "sketch: sketch size m (default 32; m(m+1)/2 features)"),
            new("seed", "S", "sketch: seed of the Gaussian sketch (default 0)"),
            new("top", "N", "lev: keep each head's N keys with the largest leverage scores (the paper's ViT setting: 32)"),
            new("keep-first", "F", "lev: always keep the first F keys"),
            new("keep-last", "L", "lev: always keep the last L keys"),
            new("power", "P", "power: the exponent p of |s q.k|^p (default 2)"),
            new("scale", "S", "score scale s (default 1/sqrt(d); the papers use 1/d)"),
            new("causal", null, "causal mask, bottom-right aligned when nq != nk"),
            new("threads", "T", "worker threads (default: all cores); output bits do not depend on it"),
            new("kernel", "NAME", "exact/power: force a kernel: " + string.Join(", ", AttentionKernels.Names)),
            new("allow-nonfinite", null, "exact: let NaN/Inf in the inputs propagate instead of rejecting them"),
            MethodOptions.KvDtypeOption("exact: store keys and values as f32, f16, bf16 or q8 (8-bit, a float16 scale per 32): a float16 .npy or F16/BF16 safetensors input already in the type is read as stored, others are rounded into it; the output states the bound on what the storage can move it (default: float32 as read, no bound)"),
            new("distributed", null, "exact attention as one rank of an MPI job (mpiexec -n P fastattn attend --distributed ...; without mpiexec, one process): ring attention over the sequence, each rank reading and writing only its rows of the .npy files (zig-zag rows with --causal)"),
            new("force", null, "overwrite --out if it exists"),
            new("json", null, "print a one-object JSON summary"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        if (o.Flag("distributed"))
        {
            return RunDistributed(o, stdout);
        }

        string qPath = o.Required("attend", "q"), kPath = o.Required("attend", "k"), vPath = o.Required("attend", "v");
        o.Required("attend", "out");
        string method = o.Get("method") ?? "exact";
        o.RejectOptionsOfOtherMethods("attend", method, OptionsOfMethods);

        // Every option is checked before any file is read or written.
        MethodSettings settings = MethodOptions.Settings(o, "attend", MethodTable.Find(method == Auto.Name ? "poly" : method), o.Threads() ?? 0);
        TensorFiles.CheckTensorOutput(o, "out");
        string outPath = o.Get("out")!;
        bool force = o.Flag("force");

        KvElementType? kvType = MethodOptions.KvType(o, "attend");
        string? nonFinite = settings.AllowNonFinite ? null : "Pass --allow-nonfinite to let non-finite values propagate through exact attention.";
        if (kvType is KvElementType type)
        {
            return RunStored(o, stdout, settings, type, TensorFiles.Load("q", qPath, nonFinite), outPath, force);
        }

        TensorData<float> q = TensorFiles.Load("q", qPath, nonFinite);
        TensorData<float> k = TensorFiles.Load("k", kPath, nonFinite);
        TensorData<float> v = TensorFiles.Load("v", vPath, nonFinite);
        Progress.Current.Step("computing attention");
        AttentionShape shape = AttentionInputs.Shape(q, k, v);
        var output = new float[shape.OutputLength];
        AttentionPlan? plan = null;
        if (method == Auto.Name)
        {
            double range = PolynomialAttention.RangeBound(q.Data, k.Data, shape.HeadDim, settings.Scale ?? (1 / Math.Sqrt(shape.HeadDim)));
            plan = AttentionPlanner.Plan(new PlanRequest(shape, range, settings.Eps ?? 1e-3, settings.Causal), AttentionPlanner.Calibrate(settings.Threads));
            method = Cli.MethodName(plan.Method);
        }

        MethodEntry entry = MethodTable.Find(method);
        MethodOptions.Warm(entry, shape, settings);
        var timer = Stopwatch.StartNew();
        MethodRun run = entry.Forward(MethodInputs.Of(q.Data, k.Data, v.Data), shape, output, settings);
        double seconds = timer.Elapsed.TotalSeconds;
        int[] outShape = AttentionInputs.OutputShape(q, shape);
        TensorFiles.Save(outPath, force, new TensorData<float>(output, outShape));
        double flops = entry.Flops(shape, settings, run);
        double gflops = flops / Math.Max(seconds, 1e-9) / 1e9;
        double? effectiveGflops = entry.ExactEquivalentFlops?.Invoke(shape, settings, run) / Math.Max(seconds, 1e-9) / 1e9;
        PolynomialCertificate? certificate = run.Certificate;
        SketchReport? sketch = run.Sketch;
        IReadOnlyList<LevSelection>? selections = run.Selections;

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", method);
                w.WriteString("kernel", run.Kernel);
                Json.WriteShape(w, "shape", outShape);
                Json.WriteShape(w, "queryShape", q.Shape);
                Json.WriteShape(w, "keyShape", k.Shape);
                w.WriteNumber("scale", settings.Scale ?? (method == "power" ? 1 : 1 / MathF.Sqrt(shape.HeadDim))); // power attention's default scale is 1
                w.WriteBoolean("causal", settings.Causal);
                w.WriteNumber("threads", settings.Threads == 0 ? Environment.ProcessorCount : settings.Threads);
                w.WriteNumber("seconds", seconds);
                w.WriteNumber("flops", flops);
                w.WriteNumber("gflops", gflops);
                if (effectiveGflops is double effective)
                {
                    w.WriteNumber("effectiveGflops", effective);
                }

                w.WriteString("out", outPath);
                if (certificate is not null)
                {
                    Json.WriteCertificate(w, certificate);
                }

                if (sketch is not null)
                {
                    w.WriteStartObject("sketch");
                    w.WriteNumber("sketchSize", sketch.SketchSize);
                    w.WriteNumber("rank", sketch.Rank);
                    w.WriteNumber("seed", sketch.Seed);
                    w.WriteString("attention", "degree-4 polynomial (s q.k)^4, sketched; statistical error, no certificate");
                    w.WriteEndObject();
                }

                if (plan is not null)
                {
                    Json.WritePlan(w, plan);
                }

                if (selections is not null)
                {
                    w.WriteStartArray("keptKeys");
                    foreach (LevSelection selection in selections)
                    {
                        w.WriteNumberValue(selection.Keys.Length);
                    }

                    w.WriteEndArray();
                }
            });
        }
        else
        {
            if (plan is not null)
            {
                stdout.WriteLine("plan: " + plan.Explanation);
            }

            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{method} attention {TensorData.FormatShape(outShape)} -> {outPath}: {seconds * 1e3:F3} ms, {gflops:F1} GFLOP/s{(effectiveGflops is double e ? $" ({e:F1} effective: exact attention's flops over this time)" : string.Empty)} (kernel {run.Kernel})"));
            if (certificate is not null)
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"certificate: |s q.k| <= R = {NumberText.Format(certificate.Range, 4)}; degree {certificate.Degree}, {certificate.Rank} features; polynomial relative error {NumberText.Format(certificate.PolynomialRelativeError)}; every output within {NumberText.Format(certificate.OutputBound)} of exact attention"));
            }

            if (selections is not null)
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"lev: kept {string.Join(", ", selections.Select(x => x.Keys.Length))} of {shape.KeyCount} keys per kv head (leverage scores; softmax over the kept keys)"));
            }

            if (sketch is not null)
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"sketch: degree-4 polynomial attention (s q.k)^4 approximated with m = {sketch.SketchSize} ({sketch.Rank} features, seed {sketch.Seed}); the error is statistical, no certificate"));
            }
        }

        return ExitCode.Ok;
    }

    /// <summary>Exact attention with keys and values read or rounded into <paramref name="type"/>, reported with the storage's error bound.</summary>
    private static int RunStored(ParsedOptions o, TextWriter stdout, MethodSettings settings, KvElementType type, TensorData<float> q, string outPath, bool force)
    {
        KvTensorData k = TensorFiles.LoadKv("k", o.Get("k")!, type);
        KvTensorData v = TensorFiles.LoadKv("v", o.Get("v")!, type);
        Progress.Current.Step("computing attention");
        AttentionShape shape = AttentionInputs.Shape(q.Shape, k.Shape, v.Shape);
        var output = new float[shape.OutputLength];
        MethodOptions.WarmKv(shape, settings, type);
        var timer = Stopwatch.StartNew();
        AttentionRun run = ExactAttention.Compute(q.Data, k.Tensor, v.Tensor, shape, output, MethodOptions.ExactOptions(settings));
        double seconds = timer.Elapsed.TotalSeconds;
        int[] outShape = AttentionInputs.OutputShape(q, shape);
        TensorFiles.Save(outPath, force, new TensorData<float>(output, outShape));
        double gflops = run.Flops / Math.Max(seconds, 1e-9) / 1e9;
        double bits = 8.0 * (k.Tensor.ByteCount + v.Tensor.ByteCount) / Math.Max(1, (long)k.Tensor.Length + v.Tensor.Length);
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "exact");
                w.WriteString("kernel", run.Kernel);
                Json.WriteShape(w, "shape", outShape);
                Json.WriteShape(w, "queryShape", q.Shape);
                Json.WriteShape(w, "keyShape", k.Shape);
                w.WriteNumber("scale", settings.Scale ?? (1 / MathF.Sqrt(shape.HeadDim)));
                w.WriteBoolean("causal", settings.Causal);
                w.WriteNumber("threads", settings.Threads == 0 ? Environment.ProcessorCount : settings.Threads);
                w.WriteNumber("seconds", seconds);
                w.WriteNumber("flops", run.Flops);
                w.WriteNumber("gflops", gflops);
                w.WriteString("out", outPath);
                Json.WriteKvStorage(w, type, bits, run.KvBound);
                w.WriteNumber("kvBytes", k.Tensor.ByteCount + v.Tensor.ByteCount);
                w.WriteString("keyFileType", k.FileType);
                w.WriteString("valueFileType", v.FileType);
                w.WriteBoolean("kvConverted", k.Converted || v.Converted);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"exact attention {TensorData.FormatShape(outShape)} -> {outPath}: {seconds * 1e3:F3} ms, {gflops:F1} GFLOP/s (kernel {run.Kernel})"));
            string how = !(k.Converted || v.Converted) ? $"read as stored from {k.FileType} files"
                : $"{(type == KvElementType.Float32 ? "widened" : "rounded")} from {k.FileType} keys and {v.FileType} values";
            stdout.WriteLine($"{Json.DescribeKvBound(type, bits, run.KvBound)}; {how}");
        }

        return ExitCode.Ok;
    }
}
