using System.Diagnostics;
using System.Globalization;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary><c>fastattn tensor</c>: tensor (2-simplicial) attention over Q, K1, K2, V1, V2 files.</summary>
internal static class TensorCommand
{
    /// <summary>The command's method names and the table's entries they run: exact is the table's tensor, poly its tensor-poly.</summary>
    private static readonly (string Name, MethodEntry Entry)[] Entries = [("exact", MethodTable.Find("tensor")), ("poly", MethodTable.Find("tensor-poly"))];

    /// <summary>The cheaper of the two by predicted time, which the command offers besides the table's methods.</summary>
    private static readonly MethodOptions.Extra Auto = new("auto", "exact or poly, the cheaper by predicted time on this machine (exact with windows)", ["scale", "causal", "eps", "window"]);

    /// <summary>Which methods accept each method-specific option.</summary>
    private static readonly (string Option, string[] Methods)[] OptionsOfMethods =
        MethodOptions.OptionTable([.. Entries.Select(m => (m.Name, m.Entry.Options)), (Auto.Name, (IReadOnlyList<string>)Auto.Options)]);

    public static Command Command { get; } = new(
        "tensor",
        "tensor attention out_i = sum softmax(s <q_i, k1_j1 o k2_j2>) (v1_j1 o v2_j2) (Alman-Song; 2-simplicial)",
        [
            new("q", "Q.npy", "queries [n, d] or [h, n, d] (required)"),
            new("k1", "K1.npy", "first keys, [nk, d] or [h, nk, d] (required)"),
            new("k2", "K2.npy", "second keys, K1's shape (required)"),
            new("v1", "V1.npy", "first values, [nk, dv] or [h, nk, dv] (required)"),
            new("v2", "V2.npy", "second values, V1's shape (required)"),
            new("out", "O.npy", "output file (required)"),
            MethodOptions.MethodOption([.. Entries.Select(m => (m.Name, m.Entry.Summary)), (Auto.Name, Auto.Summary)], "exact"),
            new("scale", "S", "score scale s (default 1/d, as in the paper)"),
            new("causal", null, "causal: j1, j2 <= i (bottom-right aligned when nq != nk)"),
            new("window", "W1,W2", "sliding windows: j1 in the last W1 positions, j2 in the last W2 (implies causal; exact only)"),
            new("eps", "E", "poly/auto: target relative error of the polynomial (default 1e-3)"),
            new("degree", "G", "poly: force the polynomial degree"),
            new("threads", "T", "worker threads (default: all cores); output bits do not depend on it"),
            new("force", null, "overwrite --out if it exists"),
            new("json", null, "print a one-object JSON summary"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string method = o.Get("method") ?? "exact";
        o.RejectOptionsOfOtherMethods("tensor", method, OptionsOfMethods);
        o.Required("tensor", "out");

        // Every option is checked before any file is read or written.
        int[]? windows = Windows(o.Get("window"));
        MethodSettings settings = MethodOptions.Settings(o, "tensor", method == "exact" ? Entries[0].Entry : Entries[1].Entry, o.Threads() ?? 0) with { Windows = windows }; // auto plans with poly's eps
        string[] inputs = [o.Required("tensor", "q"), o.Required("tensor", "k1"), o.Required("tensor", "k2"), o.Required("tensor", "v1"), o.Required("tensor", "v2")];
        TensorFiles.CheckTensorOutput(o, "out");
        string outPath = o.Get("out")!;
        bool force = o.Flag("force");

        TensorData<float> q = TensorFiles.Load("q", inputs[0]);
        TensorData<float>[] k = [TensorFiles.Load("k1", inputs[1]), TensorFiles.Load("k2", inputs[2])];
        TensorData<float>[] v = [TensorFiles.Load("v1", inputs[3]), TensorFiles.Load("v2", inputs[4])];
        Progress.Current.Step("computing tensor attention");
        TensorAttentionShape shape = Shape(q, k, v);
        settings = settings with { Scale = settings.Scale ?? 1f / shape.HeadDim };
        bool causal = settings.Causal || windows is not null;
        ReadOnlyMemory<float>[] keys = [k[0].Data, k[1].Data], values = [v[0].Data, v[1].Data];
        var output = new float[shape.OutputLength];

        string? reason = null;
        if (method == "auto")
        {
            (method, reason) = Choose(q.Data, keys, shape, settings.Scale.Value, settings.Eps ?? 1e-3, causal, windows is not null, settings.Threads);
        }

        MethodEntry entry = Entries.First(m => m.Name == method).Entry;
        var flat = new AttentionShape(1, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim);
        MethodOptions.Warm(entry, flat, settings);
        var timer = Stopwatch.StartNew();
        MethodRun run = entry.Forward(new MethodInputs(q.Data, keys, values), flat, output, settings);
        double seconds = timer.Elapsed.TotalSeconds;
        double flops = entry.Flops(flat, settings, run);
        PolynomialCertificate? certificate = run.Certificate;
        float scale = settings.Scale.Value;
        int[] outShape = [.. q.Shape];
        outShape[^1] = shape.ValueDim;
        TensorFiles.Save(outPath, force, new TensorData<float>(output, outShape));

        var inv = CultureInfo.InvariantCulture;
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", method);
                w.WriteString("kernel", run.Kernel);
                Json.WriteShape(w, "shape", outShape);
                w.WriteNumber("scale", scale);
                w.WriteBoolean("causal", causal);
                if (windows is not null)
                {
                    Json.WriteShape(w, "window", windows);
                }

                w.WriteNumber("seconds", seconds);
                w.WriteNumber("flops", flops);
                w.WriteNumber("gflops", flops / Math.Max(seconds, 1e-9) / 1e9);
                if (entry.ExactEquivalentFlops?.Invoke(flat, settings, run) is double exact)
                {
                    w.WriteNumber("effectiveGflops", exact / Math.Max(seconds, 1e-9) / 1e9);
                }

                w.WriteString("out", outPath);
                if (reason is not null)
                {
                    w.WriteString("plan", reason);
                }

                if (certificate is not null)
                {
                    Json.WriteCertificate(w, certificate);
                }
            });
        }
        else
        {
            if (reason is not null)
            {
                stdout.WriteLine("plan: " + reason);
            }

            stdout.WriteLine(string.Create(inv, $"tensor attention ({method}, {run.Kernel}) {TensorData.FormatShape(outShape)} -> {outPath}: {seconds * 1e3:F3} ms"));
            if (certificate is not null)
            {
                stdout.WriteLine(string.Create(inv,
                    $"certificate: |s <q, k1 o k2>| <= R = {NumberText.Format(certificate.Range, 4)}; degree {certificate.Degree}, {certificate.Rank} features; polynomial relative error {NumberText.Format(certificate.PolynomialRelativeError)}; every output within {NumberText.Format(certificate.OutputBound)} of exact tensor attention"));
            }
        }

        return ExitCode.Ok;
    }

    /// <summary>Exact or polynomial by predicted time on this machine (the planner's calibration), with the reason.</summary>
    private static (string Method, string Reason) Choose(float[] q, ReadOnlyMemory<float>[] keys, TensorAttentionShape shape, float scale, double eps, bool causal, bool windowed, int threads)
    {
        var inv = CultureInfo.InvariantCulture;
        MethodThroughput machine = AttentionPlanner.Calibrate(threads);
        double triples = (double)shape.HeadCount * shape.QueryCount * shape.KeyCount * shape.KeyCount * (causal ? 0.5 : 1);
        double exact = triples * (machine.ExactPairSeconds + (machine.ExactFlopSeconds * 2 * (shape.HeadDim + shape.ValueDim)));
        if (windowed)
        {
            return ("exact", "exact: windows need the exact kernel");
        }

        double range = TensorAttention.RangeBound(q, keys, shape.HeadDim, scale);
        if (PolynomialAttention.Size(range, shape.HeadDim, eps) is not (int degree, long rank))
        {
            return ("exact", string.Create(inv, $"exact: no polynomial reaches eps {NumberText.Format(eps, 2)} on this range (entries not bounded enough)"));
        }

        if (rank > PolynomialAttention.DefaultMaxRank)
        {
            return ("exact", string.Create(inv, $"exact: the polynomial method needs r = {rank} features (degree {degree}), over the budget"));
        }

        // Two key matrices: the key side's work counts twice.
        var flat = new AttentionShape(1, shape.HeadCount, shape.QueryCount, 2 * shape.KeyCount, shape.HeadDim, shape.ValueDim);
        double poly = machine.PolynomialSeconds(flat, rank);
        return poly < exact
            ? ("poly", string.Create(inv, $"poly: predicted {NumberText.Format(poly * 1e3)} ms against {NumberText.Format(exact * 1e3)} ms exact (degree {degree}, r = {rank})"))
            : ("exact", string.Create(inv, $"exact: predicted {NumberText.Format(exact * 1e3)} ms against {NumberText.Format(poly * 1e3)} ms for the polynomial method"));
    }

    internal static int[]? Windows(string? text)
    {
        if (text is null)
        {
            return null;
        }

        string[] parts = text.Split(',');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out int w1) || !int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int w2) || w1 < 1 || w2 < 1)
        {
            throw new UsageException($"--window must be two positive integers W1,W2; got '{text}'");
        }

        return [w1, w2];
    }

    internal static TensorAttentionShape Shape(TensorData<float> q, TensorData<float>[] k, TensorData<float>[] v)
    {
        string[] kNames = ["k1", "k2"], vNames = ["v1", "v2"];
        if (q.Rank is not (2 or 3))
        {
            throw new BadInputException($"--q has shape {q.ShapeText}; expected [n, d] or [h, n, d]");
        }

        for (int t = 0; t < 2; t++)
        {
            if (k[t].Rank != q.Rank || v[t].Rank != q.Rank)
            {
                throw new BadInputException($"--{kNames[t]} {k[t].ShapeText} and --{vNames[t]} {v[t].ShapeText} must have --q's rank ({q.ShapeText})");
            }

            if (!k[t].Shape.SequenceEqual(k[0].Shape))
            {
                throw new BadInputException($"--k2 has shape {k[1].ShapeText} but --k1 has shape {k[0].ShapeText}; they must match");
            }

            if (!v[t].Shape.SequenceEqual(v[0].Shape))
            {
                throw new BadInputException($"--v2 has shape {v[1].ShapeText} but --v1 has shape {v[0].ShapeText}; they must match");
            }
        }

        int heads = q.Rank == 3 ? q.Shape[0] : 1;
        int nq = q.Shape[^2], d = q.Shape[^1], nk = k[0].Shape[^2], dv = v[0].Shape[^1];
        if (k[0].Shape[^1] != d || (q.Rank == 3 && k[0].Shape[0] != heads) || v[0].Shape[^2] != nk || (q.Rank == 3 && v[0].Shape[0] != heads))
        {
            throw new BadInputException($"shapes do not agree: --q {q.ShapeText}, --k1 {k[0].ShapeText}, --v1 {v[0].ShapeText} (heads and d must match, and V's rows K's)");
        }

        if (nq == 0 || nk == 0 || d == 0 || dv == 0)
        {
            throw new BadInputException("an input is empty");
        }

        return new TensorAttentionShape(heads, nq, nk, d, dv);
    }
}
