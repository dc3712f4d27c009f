using System.Diagnostics;
using System.Globalization;
using FastAttention.Kernels;

namespace FastAttention.Cli;

/// <summary><c>fastattn attend</c>: attention over Q, K, V files, written to an output file.</summary>
internal static class AttendCommand
{
    public static readonly string[] Methods = ["exact", "poly"];

    public static Command Command { get; } = new(
        "attend",
        "compute attention O = softmax(s Q K^T) V from .npy/.npz/.safetensors inputs",
        [
            new("q", "Q.npy", "queries [n,d], [h,n,d] or [b,h,n,d] (required)"),
            new("k", "K.npy", "keys, same rank; fewer heads for grouped-query attention (required)"),
            new("v", "V.npy", "values, K's shape with any last dimension (required)"),
            new("out", "O.npy", "output file (.npy, or .npz/.safetensors holding tensor 'out') (required)"),
            new("method", "M", "exact (default), or poly: the polynomial method (Alman-Song) with a certificate"),
            new("eps", "E", "poly: target relative error of the polynomial for e^x (default 1e-3)"),
            new("degree", "G", "poly: force the polynomial degree"),
            new("scale", "S", "score scale s (default 1/sqrt(d); the papers use 1/d)"),
            new("causal", null, "causal mask, bottom-right aligned when nq != nk"),
            new("threads", "T", "worker threads (default: all cores); output bits do not depend on it"),
            new("kernel", "NAME", "force a kernel: " + string.Join(", ", KernelRegistry.Attention.Select(k => k.Name))),
            new("allow-nonfinite", null, "let NaN/Inf in the inputs propagate instead of rejecting them"),
            new("force", null, "overwrite --out if it exists"),
            new("json", null, "print a one-object JSON summary"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string qPath = o.Required("attend", "q"), kPath = o.Required("attend", "k"), vPath = o.Required("attend", "v");
        string outPath = o.Required("attend", "out");
        string method = o.Get("method") ?? "exact";
        if (!Methods.Contains(method))
        {
            throw new UsageException($"attend: unknown --method '{method}' (available: {string.Join(", ", Methods)})");
        }

        float? scale = o.Float("scale");
        int threads = o.Int("threads", 1, 1024) ?? 0;
        bool force = o.Flag("force");
        TensorFiles.CheckWritable("out", outPath, force);

        TensorData<float> q = TensorFiles.Load("q", qPath);
        TensorData<float> k = TensorFiles.Load("k", kPath);
        TensorData<float> v = TensorFiles.Load("v", vPath);
        AttentionShape shape = AttentionInputs.Shape(q, k, v);
        var output = new float[shape.OutputLength];
        var options = new ExactAttentionOptions
        {
            Scale = scale,
            Causal = o.Flag("causal"),
            MaxDegreeOfParallelism = threads,
            Kernel = o.Get("kernel"),
            AllowNonFinite = o.Flag("allow-nonfinite"),
        };

        PolynomialCertificate? certificate = null;
        AttentionRun run;
        double seconds;
        if (method == "poly")
        {
            var polynomialOptions = new PolynomialAttentionOptions
            {
                Scale = scale,
                RelativeError = o.Get("eps") is null ? null : (double?)o.Float("eps", positive: true),
                Degree = o.Int("degree", 0, FastAttention.Polynomial.ExpPolynomial.MaxDegree),
                Causal = options.Causal,
            };
            var timer = Stopwatch.StartNew();
            certificate = PolynomialAttention.Compute(q.Data, k.Data, v.Data, shape, output, polynomialOptions);
            seconds = timer.Elapsed.TotalSeconds;
            run = new AttentionRun("polynomial-double", certificate.PredictedFlops);
        }
        else
        {
            // Warm-up on a one-token problem of the same kernel, so `seconds` measures the computation
            // and not the JIT compiling it (the CLI compiles loop methods fully optimised at once).
            ExactAttention.Compute(new float[shape.HeadDim], new float[shape.HeadDim], new float[shape.ValueDim],
                new AttentionShape(1, 1, 1, 1, shape.HeadDim, shape.ValueDim), new float[shape.ValueDim], options with { Causal = false, AllowNonFinite = true });

            var watch = Stopwatch.StartNew();
            run = ExactAttention.Compute(q.Data, k.Data, v.Data, shape, output, options);
            seconds = watch.Elapsed.TotalSeconds;
        }

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
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{method} attention {TensorData.FormatShape(outShape)} -> {outPath}: {seconds * 1e3:F3} ms, {gflops:F1} GFLOP/s (kernel {run.Kernel})"));
            if (certificate is not null)
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"certificate: |s q.k| <= R = {certificate.Range:G4}; degree {certificate.Degree}, {certificate.Rank} features; polynomial relative error {certificate.PolynomialRelativeError:G3}; every output within {certificate.OutputBound:G3} of exact attention"));
            }
        }

        return ExitCode.Ok;
    }
}
