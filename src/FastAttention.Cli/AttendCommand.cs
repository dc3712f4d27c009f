using System.Diagnostics;
using System.Globalization;

namespace FastAttention.Cli;

/// <summary><c>fastattn attend</c>: attention over Q, K, V files, written to an output file.</summary>
internal static class AttendCommand
{
    public static readonly string[] Methods = ["exact", "poly", "sketch", "auto", "lev"];

    public static Command Command { get; } = new(
        "attend",
        "compute attention O = softmax(s Q K^T) V from .npy/.npz/.safetensors inputs",
        [
            new("q", "Q.npy", "queries [n,d], [h,n,d] or [b,h,n,d] (required)"),
            new("k", "K.npy", "keys, same rank; fewer heads for grouped-query attention (required)"),
            new("v", "V.npy", "values, K's shape with any last dimension (required)"),
            new("out", "O.npy", "output file (.npy, or .npz/.safetensors holding tensor 'out') (required)"),
            new("method", "M", "exact (default); poly: the polynomial method (Alman-Song) with a certificate; auto: the planner picks exact or poly by predicted time; sketch: sketched degree-4 attention (PolySketchFormer, statistical error)"),
            new("eps", "E", "poly/auto: target relative error of the polynomial for e^x (default 1e-3); lev: keep each head's universal set {j : leverage score >= E}"),
            new("degree", "G", "poly: force the polynomial degree"),
            new("sketch", "M", "sketch: sketch size m (default 32; m(m+1)/2 features)"),
            new("seed", "S", "sketch: seed of the Gaussian sketch (default 0)"),
            new("top", "N", "lev: keep each head's N keys with the largest leverage scores (the paper's ViT setting: 32)"),
            new("keep-first", "F", "lev: always keep the first F keys"),
            new("keep-last", "L", "lev: always keep the last L keys"),
            new("scale", "S", "score scale s (default 1/sqrt(d); the papers use 1/d)"),
            new("causal", null, "causal mask, bottom-right aligned when nq != nk"),
            new("threads", "T", "worker threads (default: all cores); output bits do not depend on it"),
            new("kernel", "NAME", "force a kernel: " + string.Join(", ", AttentionKernels.Names)),
            new("allow-nonfinite", null, "let NaN/Inf in the inputs propagate instead of rejecting them"),
            new("force", null, "overwrite --out if it exists"),
            new("json", null, "print a one-object JSON summary"),
        ],
        Run);

    /// <summary>The options that belong to some methods only, and those methods.</summary>
    private static readonly (string Option, string[] Methods)[] MethodOptions =
    [
        ("eps", ["poly", "auto", "lev"]),
        ("degree", ["poly"]),
        ("sketch", ["sketch"]),
        ("seed", ["sketch"]),
        ("top", ["lev"]),
        ("keep-first", ["lev"]),
        ("keep-last", ["lev"]),
        ("kernel", ["exact", "auto"]),
        ("allow-nonfinite", ["exact"]),
    ];

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string qPath = o.Required("attend", "q"), kPath = o.Required("attend", "k"), vPath = o.Required("attend", "v");
        string outPath = o.Required("attend", "out");
        string method = o.Get("method") ?? "exact";
        if (!Methods.Contains(method))
        {
            throw new UsageException($"attend: unknown --method '{method}' (available: {string.Join(", ", Methods)})");
        }

        o.RejectOptionsOfOtherMethods("attend", method, MethodOptions);

        // Every option is checked before any file is read or written.
        float? scale = o.Float("scale");
        int threads = o.Threads() ?? 0;
        bool causal = o.Flag("causal");
        string? kernel = o.Kernel("attend");
        bool allowNonFinite = o.Flag("allow-nonfinite");
        double eps = o.Double("eps", positive: true) ?? 1e-3;
        if (eps >= 1 && method is "poly" or "auto")
        {
            throw new UsageException($"attend: --eps is the polynomial's relative error and must be below 1; got {eps}");
        }

        if (eps > 1 && method == "lev")
        {
            throw new UsageException($"attend: --eps for --method lev is an attention weight and must lie in (0, 1]; got {eps}");
        }

        int? degree = o.Int("degree", 0, FastAttention.Polynomial.ExpPolynomial.MaxDegree);
        int sketchSize = o.Int("sketch", 1, SketchedAttention.MaxSketchSize) ?? 0;
        int seed = o.Int("seed", 0, int.MaxValue) ?? 0;
        var levOptions = new LevAttentionOptions
        {
            Eps = o.Double("eps", positive: true),
            Top = o.Int("top", 1, int.MaxValue),
            Scale = scale,
            KeepFirst = o.Int("keep-first", 0, int.MaxValue) ?? 0,
            KeepLast = o.Int("keep-last", 0, int.MaxValue) ?? 0,
            MaxDegreeOfParallelism = threads,
        };
        if (method == "lev" && causal)
        {
            throw new UsageException("attend: --method lev selects keys for every query at once; --causal is not supported (decoding uses the LevKvCache API)");
        }

        if (method == "lev" && levOptions.Eps.HasValue == levOptions.Top.HasValue)
        {
            throw new UsageException("attend: --method lev needs exactly one of --eps E (universal set) and --top N");
        }

        TensorFiles.CheckTensorOutput(o, "out");
        bool force = o.Flag("force");

        string? nonFinite = allowNonFinite ? null : "Pass --allow-nonfinite to let non-finite values propagate through exact attention.";
        TensorData<float> q = TensorFiles.Load("q", qPath, nonFinite);
        TensorData<float> k = TensorFiles.Load("k", kPath, nonFinite);
        TensorData<float> v = TensorFiles.Load("v", vPath, nonFinite);
        Progress.Current.Step("computing attention");
        AttentionShape shape = AttentionInputs.Shape(q, k, v);
        var output = new float[shape.OutputLength];
        var options = new ExactAttentionOptions
        {
            Scale = scale,
            Causal = causal,
            MaxDegreeOfParallelism = threads,
            Kernel = kernel,
            AllowNonFinite = allowNonFinite,
        };

        AttentionPlan? plan = null;
        if (method == "auto")
        {
            double range = PolynomialAttention.RangeBound(q.Data, k.Data, shape.HeadDim, scale ?? (1 / Math.Sqrt(shape.HeadDim)));
            plan = AttentionPlanner.Plan(new PlanRequest(shape, range, eps, options.Causal), AttentionPlanner.Calibrate(threads));
            method = Cli.MethodName(plan.Method);
        }

        PolynomialCertificate? certificate = null;
        SketchReport? sketch = null;
        IReadOnlyList<LevSelection>? selections = null;
        AttentionRun run;
        var timer = Stopwatch.StartNew();
        if (method == "poly")
        {
            var polynomialOptions = new PolynomialAttentionOptions
            {
                Scale = scale,
                RelativeError = eps,
                Degree = degree,
                Causal = options.Causal,
                MaxDegreeOfParallelism = threads,
            };
            certificate = PolynomialAttention.Compute(q.Data, k.Data, v.Data, shape, output, polynomialOptions);
            run = new AttentionRun("polynomial-double", certificate.PredictedFlops);
        }
        else if (method == "lev")
        {
            selections = LevAttention.Compute(q.Data, k.Data, v.Data, shape, output, levOptions);
            double kept = selections.Sum(x => (double)x.Keys.Length) / selections.Count;
            run = new AttentionRun("lev-softmax", 4.0 * shape.BatchSize * shape.HeadCount * shape.QueryCount * kept * shape.HeadDim);
        }
        else if (method == "sketch")
        {
            var sketchOptions = new SketchedAttentionOptions
            {
                Scale = scale,
                SketchSize = sketchSize,
                Seed = seed,
                Causal = options.Causal,
                MaxDegreeOfParallelism = threads,
            };
            sketch = SketchedAttention.Compute(q.Data, k.Data, v.Data, shape, output, sketchOptions);
            run = new AttentionRun("sketch-double", sketch.PredictedFlops);
        }
        else
        {
            // Warm-up on a small problem that takes the same kernel (up to 16 queries a head pick the decoding kernel,
            // more the tiled one: a one-token warm-up compiled the wrong one), heads per kv head, dimensions, mask and
            // thread count, so `seconds` measures the computation and not the JIT compiling it or the threads starting.
            int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
            int warmQueries = Math.Min(shape.QueryCount, 64), warmKeys = Math.Min(shape.KeyCount, 512);
            var warm = new AttentionShape(1, group, warmQueries, warmKeys, shape.HeadDim, shape.ValueDim, 1);
            ExactAttention.Compute(new float[warm.QueryLength], new float[warm.KeyLength], new float[warm.ValueLength], warm,
                new float[warm.OutputLength], options with { Causal = options.Causal && warmQueries <= warmKeys, AllowNonFinite = true });
            timer.Restart();
            run = ExactAttention.Compute(q.Data, k.Data, v.Data, shape, output, options);
        }

        double seconds = timer.Elapsed.TotalSeconds;
        int[] outShape = AttentionInputs.OutputShape(q, shape);
        TensorFiles.Save(outPath, force, new TensorData<float>(output, outShape));
        double gflops = run.Flops / Math.Max(seconds, 1e-9) / 1e9;

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", method);
                w.WriteString("kernel", run.Kernel);
                Json.WriteShape(w, "shape", outShape);
                Json.WriteShape(w, "queryShape", q.Shape);
                Json.WriteShape(w, "keyShape", k.Shape);
                w.WriteNumber("scale", scale ?? 1 / MathF.Sqrt(shape.HeadDim));
                w.WriteBoolean("causal", options.Causal);
                w.WriteNumber("threads", threads == 0 ? Environment.ProcessorCount : threads);
                w.WriteNumber("seconds", seconds);
                w.WriteNumber("flops", run.Flops);
                w.WriteNumber("gflops", gflops);
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
                $"{method} attention {TensorData.FormatShape(outShape)} -> {outPath}: {seconds * 1e3:F3} ms, {gflops:F1} GFLOP/s (kernel {run.Kernel})"));
            if (certificate is not null)
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"certificate: |s q.k| <= R = {certificate.Range:G4}; degree {certificate.Degree}, {certificate.Rank} features; polynomial relative error {certificate.PolynomialRelativeError:G3}; every output within {certificate.OutputBound:G3} of exact attention"));
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
}
