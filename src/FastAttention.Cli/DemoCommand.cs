using System.Globalization;
using System.Reflection;
using System.Runtime.Intrinsics;
using FastAttention.IO;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn demo</c>: exact attention on real attention tensors tapped from PaddleOCR's PP-OCRv4
/// recogniser (embedded in the tool, with ONNX Runtime's own outputs), every kernel this CPU runs,
/// checked against the float64 reference and against ONNX Runtime.
/// </summary>
internal static class DemoCommand
{
    private static readonly (string Line, string Block)[] Sets =
        [("line40", "block1"), ("line40", "block2"), ("line260", "block1"), ("line260", "block2")];

    /// <summary>LevAttention's kept keys per head in the demo (the LevAttention paper's ViT setting).</summary>
    private const int LevTop = 32;

    public static Command Command { get; } = new(
        "demo",
        "run every method on real OCR-model attention tensors embedded in the tool; print time, GFLOP/s and error",
        [
            new("repeat", "R", "timed runs per row; the median is shown (default 5)"),
            MethodOptions.KvDtypeOption("also run exact attention on every data set with keys and values stored as f32, f16, bf16 or q8, and report its max |error| against the float32 run next to the storage's error bound"),
            new("json", null, "print the rows as JSON instead of a table"),
        ],
        Run);

    /// <summary>One measured row: <paramref name="Gflops"/> counts the method's own flops; <paramref name="EffectiveGflops"/>, for
    /// approximate methods, exact attention's flops over the same time.</summary>
    private sealed record Row(string Data, string Shape, string Method, string Kernel, double Seconds, double Gflops, double ErrorVsReference, double? ErrorVsOnnxRuntime, double? EffectiveGflops = null)
    {
        /// <summary>With --kv-dtype, on the row of the stored keys and values: the type and what it cost against the float32 run.</summary>
        public StoredRow? Kv { get; init; }
    }

    /// <summary>Exact attention on stored keys and values: the type, its bits a value, the storage bound and the max |error| against the float32 run.</summary>
    private sealed record StoredRow(KvElementType Type, double BitsPerValue, KvErrorBound? Bound, double ErrorVsFloat32);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        int repeat = o.Int("repeat", 1, 1000) ?? 5;
        bool json = o.Flag("json");
        KvElementType? kvType = MethodOptions.KvType(o, "demo");
        var rows = new List<Row>();
        if (!json)
        {
            stdout.WriteLine($"FastAttention demo: {Environment.ProcessorCount} cores, Vector512 {(Vector512.IsHardwareAccelerated ? "accelerated" : "not accelerated")}, .NET {Environment.Version}");
            TensorData<float> first = Resource($"ocr/{Sets[0].Line}/{Sets[0].Block}/q.npy");
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Data: PP-OCRv4 text recogniser self-attention ({first.Shape[0]} heads, d = {first.Shape[^1]}; {string.Join(", ", Sets.Select(x => x.Line).Distinct())}), tapped in ONNX Runtime while reading GPL-3 text lines."));
            stdout.WriteLine();
        }

        foreach ((string line, string block) in Sets)
        {
            TensorData<float> q = Resource($"ocr/{line}/{block}/q.npy");
            TensorData<float> k = Resource($"ocr/{line}/{block}/k.npy");
            TensorData<float> v = Resource($"ocr/{line}/{block}/v.npy");
            TensorData<float> ort = Resource($"ocr/{line}/{block}/out.npy");
            rows.AddRange(Measure($"{line}/{block}", q, k, v, ort, repeat, kvType));
        }

        // A larger seeded random input shows throughput at a transformer-like head size.
        var random = new Random(2024);
        float[] Fill(int count) => [.. Enumerable.Range(0, count).Select(_ => (float)((random.NextDouble() * 2) - 1))];
        int[] shape = [4, 1024, 64];
        var rq = new TensorData<float>(Fill(4 * 1024 * 64), shape);
        var rk = new TensorData<float>(Fill(4 * 1024 * 64), shape);
        var rv = new TensorData<float>(Fill(4 * 1024 * 64), shape);
        rows.AddRange(Measure("random (seeded)", rq, rk, rv, null, repeat, kvType, onlyBest: true));

        // Decoding: one new query per head against a long cache of keys (the split-key kernel).
        var dq = new TensorData<float>(Fill(8 * 64), [8, 1, 64]);
        var dk = new TensorData<float>(Fill(8 * 16384 * 64), [8, 16384, 64]);
        var dv = new TensorData<float>(Fill(8 * 16384 * 64), [8, 16384, 64]);
        rows.AddRange(Measure("random decode (seeded)", dq, dk, dv, null, repeat, kvType, onlyBest: true));

        // The polynomial method (Alman-Song) where it applies: bounded entries, small d, scale 1/d.
        (Row polyRow, PolynomialCertificate certificate) = MeasurePolynomial(random, repeat);
        rows.Add(polyRow);

        // Tensor attention over pairs of keys (Alman-Song): Q and the keys/values of both blocks of line 40.
        rows.Add(MeasureTensor(repeat));

        // LevAttention: softmax over each head's LevTop keys of largest leverage score (line 260, block 2).
        (Row levRow, int[] kept, int keyCount) = MeasureLev(repeat);
        rows.Add(levRow);

        if (json)
        {
            Json.Write(stdout, w =>
            {
                w.WriteStartArray("rows");
                foreach (Row row in rows)
                {
                    w.WriteStartObject();
                    w.WriteString("data", row.Data);
                    w.WriteString("shape", row.Shape);
                    w.WriteString("method", row.Method);
                    w.WriteString("kernel", row.Kernel);
                    w.WriteNumber("seconds", row.Seconds);
                    w.WriteNumber("gflops", row.Gflops);
                    if (row.EffectiveGflops is double effective)
                    {
                        w.WriteNumber("effectiveGflops", effective);
                    }

                    w.WriteNumber("maxErrorVsFloat64", row.ErrorVsReference);
                    if (row.Method == "poly")
                    {
                        w.WriteNumber("certificateOutputBound", certificate.OutputBound);
                    }

                    if (row.ErrorVsOnnxRuntime is double e)
                    {
                        w.WriteNumber("maxRelativeErrorVsOnnxRuntime", e);
                    }

                    if (row.Kv is StoredRow kv)
                    {
                        Json.WriteKvStorage(w, kv.Type, kv.BitsPerValue, kv.Bound);
                        w.WriteNumber("maxErrorVsFloat32", kv.ErrorVsFloat32);
                    }

                    w.WriteEndObject();
                }

                w.WriteEndArray();
            });
            return ExitCode.Ok;
        }

        PrintTable(stdout, rows);
        stdout.WriteLine();
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"poly certificate: |s q.k| <= R = {NumberText.Format(certificate.Range)}, degree {certificate.Degree}, {certificate.Rank} features, polynomial relative error {NumberText.Format(certificate.PolynomialRelativeError, 2)}: every output within {NumberText.Format(certificate.OutputBound, 2)} of exact attention (measured {NumberText.Format(polyRow.ErrorVsReference, 2)})."));
        string keptText = kept.Distinct().Count() == 1 ? kept[0].ToString(CultureInfo.InvariantCulture) : string.Join(", ", kept);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"lev kept {keptText} of {keyCount} keys per head (top {LevTop} by leverage score); softmax has no universal set, so the error is what dropping the other keys cost here (docs/experiments/levattention.md)."));
        if (kvType is KvElementType type)
        {
            Row[] stored = [.. rows.Where(r => r.Kv is not null)];
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{KvElementTypes.Name(type)} K/V ({NumberText.Format(stored[0].Kv!.BitsPerValue)} bits a value; kernel {string.Join(", ", stored.Select(r => r.Kernel).Distinct())}): max |out - out_f32| against the storage bound (the float32 kernels' own rounding, the max err column, comes on top):"));
            foreach (Row row in stored)
            {
                StoredRow kv = row.Kv!;
                string bound = kv.Bound is null ? "no bound" : string.Create(CultureInfo.InvariantCulture, $"bound {NumberText.Format(kv.Bound.Absolute, 2)}");
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {row.Data}: {NumberText.Format(kv.ErrorVsFloat32, 2)} ({bound})"));
            }
        }

        stdout.WriteLine();
        stdout.WriteLine($"time: median of {repeat} runs (compute only); GFLOP/s counts each method's own flops: exact 4 n^2 d per head, tensor 4 n^3 d, poly its feature products, lev the leverage scores plus 4 n k d over the k kept keys (--json adds effectiveGflops: exact attention's flops over the same time);");
        stdout.WriteLine("error: max |ours - float64 reference| (lev: against full softmax, so it includes what dropping keys costs);");
        stdout.WriteLine("vs ORT: max |ours - out.npy| / max |out.npy|, out.npy being ONNX Runtime's own attention output, recorded with the data (data/ocr/README.md).");
        return ExitCode.Ok;
    }

    /// <summary>Exact tensor attention on real tensors, against the float64 oracle.</summary>
    private static Row MeasureTensor(int repeat)
    {
        TensorData<float> q = Resource("ocr/line40/block1/q.npy");
        ReadOnlyMemory<float>[] keys = [Resource("ocr/line40/block1/k.npy").Data, Resource("ocr/line40/block2/k.npy").Data];
        ReadOnlyMemory<float>[] values = [Resource("ocr/line40/block1/v.npy").Data, Resource("ocr/line40/block2/v.npy").Data];
        var shape = new TensorAttentionShape(q.Shape[0], q.Shape[1], q.Shape[1], q.Shape[2], q.Shape[2]);
        var output = new float[shape.OutputLength];
        Timed t = Time("tensor", new MethodInputs(q.Data, keys, values), new AttentionShape(1, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim), output, new MethodSettings(), repeat);
        var reference = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q.Data, keys, values, shape, reference);
        double error = output.Zip(reference, (a, b) => Math.Abs(a - b)).Max();
        return new Row("line40, K1/V1 block1, K2/V2 block2", q.ShapeText, "tensor", t.Run.Kernel, t.Seconds, t.Gflops, error, null);
    }

    /// <summary>LevAttention (the top <see cref="LevTop"/> keys per head by leverage score) on real tensors; the error is against full softmax in float64.</summary>
    private static (Row Row, int[] Kept, int KeyCount) MeasureLev(int repeat)
    {
        TensorData<float> q = Resource("ocr/line260/block2/q.npy"), k = Resource("ocr/line260/block2/k.npy"), v = Resource("ocr/line260/block2/v.npy");
        var shape = new AttentionShape(1, q.Shape[0], q.Shape[1], k.Shape[1], q.Shape[2], v.Shape[2]);
        var output = new float[shape.OutputLength];
        Timed t = Time("lev", MethodInputs.Of(q.Data, k.Data, v.Data), shape, output, new MethodSettings { Top = LevTop }, repeat);
        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q.Data, k.Data, v.Data, shape, reference);
        double error = output.Zip(reference, (a, b) => Math.Abs(a - b)).Max();
        int[] kept = [.. t.Run.Selections!.Select(x => x.Keys.Length)];
        string label = string.Create(CultureInfo.InvariantCulture, $"line260/block2, top {LevTop} keys");
        return (new Row(label, q.ShapeText, "lev", t.Run.Kernel, t.Seconds, t.Gflops, error, null, t.EffectiveGflops), kept, shape.KeyCount);
    }

    private static (Row Row, PolynomialCertificate Certificate) MeasurePolynomial(Random random, int repeat)
    {
        const int N = 4096, D = 4, Dv = 4;
        float[] Fill() => [.. Enumerable.Range(0, N * D).Select(_ => (random.NextSingle() * 2) - 1)];
        float[] q = Fill(), k = Fill(), v = Fill();
        var shape = AttentionShape.SingleHead(N, D) with { ValueDim = Dv };
        var output = new float[shape.OutputLength];
        Timed t = Time("poly", MethodInputs.Of(q, k, v), shape, output, new MethodSettings { Scale = 1f / D, Eps = 1e-3 }, repeat);
        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q, k, v, shape, reference, scale: 1.0 / D);
        double error = output.Zip(reference, (a, b) => Math.Abs(a - b)).Max();
        return (new Row("random bounded [-1, 1], s = 1/d", $"[1, {N}, {D}]", "poly", t.Run.Kernel, t.Seconds, t.Gflops, error, null, t.EffectiveGflops), t.Run.Certificate!);
    }

    /// <summary>A method's run report, median time, and GFLOP/s by the method table's counts (own, and exact-equivalent for approximate methods).</summary>
    private sealed record Timed(MethodRun Run, double Seconds, double Gflops, double? EffectiveGflops);

    /// <summary>Runs a method of the table once (warm-up), then times <paramref name="repeat"/> runs.</summary>
    private static Timed Time(string method, MethodInputs inputs, AttentionShape shape, float[] output, MethodSettings settings, int repeat)
    {
        MethodEntry entry = MethodTable.Find(method);
        MethodRun run = entry.Forward(inputs, shape, output, settings); // warm-up
        double seconds = Timing.Median(Timing.Repeat(() => entry.Forward(inputs, shape, output, settings), repeat, method));
        double? effective = entry.ExactEquivalentFlops?.Invoke(shape, settings, run) / seconds / 1e9;
        return new Timed(run, seconds, entry.Flops(shape, settings, run) / seconds / 1e9, effective);
    }

    private static IEnumerable<Row> Measure(string name, TensorData<float> q, TensorData<float> k, TensorData<float> v, TensorData<float>? ort, int repeat, KvElementType? kvType, bool onlyBest = false)
    {
        AttentionShape shape = AttentionInputs.Shape(q, k, v);
        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q.Data, k.Data, v.Data, shape, reference);
        var output = new float[shape.OutputLength];
        IEnumerable<KernelInfo> kernels = onlyBest ? AttentionKernels.For(shape).Take(1) : AttentionKernels.For(shape);
        foreach (KernelInfo kernel in kernels)
        {
            Timed t = Time("exact", MethodInputs.Of(q.Data, k.Data, v.Data), shape, output, new MethodSettings { Kernel = kernel.Name }, repeat);
            double error = 0;
            for (int i = 0; i < output.Length; i++)
            {
                error = Math.Max(error, Math.Abs(output[i] - reference[i]));
            }

            yield return new Row(name, q.ShapeText, "exact", t.Run.Kernel, t.Seconds, t.Gflops, error, RelativeToOrt(output, ort));
        }

        if (kvType is KvElementType type)
        {
            yield return MeasureStored(name, q, k, v, ort, shape, reference, repeat, type);
        }
    }

    /// <summary>
    /// Exact attention with keys and values rounded into <paramref name="type"/> (the typed call on the kernel the library
    /// picks), against the float64 reference on the float32 values and against the float32 run on the kernel it picks.
    /// </summary>
    private static Row MeasureStored(string name, TensorData<float> q, TensorData<float> k, TensorData<float> v, TensorData<float>? ort, AttentionShape shape,
        double[] reference, int repeat, KvElementType type)
    {
        KvTensor keys = KvTensor.Encode(k.Data, shape.HeadDim, type), values = KvTensor.Encode(v.Data, shape.ValueDim, type);
        var plain = new float[shape.OutputLength];
        ExactAttention.Compute(q.Data, k.Data, v.Data, shape, plain);
        var output = new float[shape.OutputLength];
        AttentionRun run = ExactAttention.Compute(q.Data, keys, values, shape, output); // warm-up
        double seconds = Timing.Median(Timing.Repeat(() => ExactAttention.Compute(q.Data, keys, values, shape, output), repeat, "exact " + KvElementTypes.Name(type)));
        double error = 0, vsFloat32 = 0;
        for (int i = 0; i < output.Length; i++)
        {
            error = Math.Max(error, Math.Abs(output[i] - reference[i]));
            vsFloat32 = Math.Max(vsFloat32, Math.Abs(output[i] - plain[i]));
        }

        double bits = 8.0 * (keys.ByteCount + values.ByteCount) / ((long)keys.Length + values.Length);
        return new Row(name, q.ShapeText, "exact", run.Kernel, seconds, run.Flops / seconds / 1e9, error, RelativeToOrt(output, ort))
        {
            Kv = new StoredRow(type, bits, run.KvBound, vsFloat32),
        };
    }

    /// <summary>max |ours - ORT| / max |ORT|, or null without ONNX Runtime's output.</summary>
    private static double? RelativeToOrt(float[] output, TensorData<float>? ort)
    {
        if (ort is null)
        {
            return null;
        }

        double diff = 0, scale = 0;
        for (int i = 0; i < output.Length; i++)
        {
            diff = Math.Max(diff, Math.Abs(output[i] - ort.Data[i]));
            scale = Math.Max(scale, Math.Abs(ort.Data[i]));
        }

        return diff / scale;
    }

    private static void PrintTable(TextWriter stdout, List<Row> rows)
    {
        var inv = CultureInfo.InvariantCulture;
        string[] header = ["data", "shape", "method", "kernel", "time", "GFLOP/s", "max err", "vs ORT"];
        List<string[]> cells =
        [
            header,
            .. rows.Select(r => new[]
            {
                r.Data, r.Shape, r.Kv is { } kv ? $"{r.Method} {KvElementTypes.Name(kv.Type)}" : r.Method, r.Kernel,
                r.Seconds >= 1e-2 ? string.Create(inv, $"{r.Seconds * 1e3:F1} ms") : string.Create(inv, $"{r.Seconds * 1e6:F0} us"),
                string.Create(inv, $"{r.Gflops:F1}"),
                string.Create(inv, $"{NumberText.Format(r.ErrorVsReference, 2)}"),
                r.ErrorVsOnnxRuntime is double e ? string.Create(inv, $"{NumberText.Format(e, 2)}") : "-",
            }),
        ];
        int[] widths = [.. Enumerable.Range(0, header.Length).Select(c => cells.Max(row => row[c].Length))];
        foreach (string[] row in cells)
        {
            stdout.WriteLine(string.Join("  ", row.Select((cell, c) => c >= 4 ? cell.PadLeft(widths[c]) : cell.PadRight(widths[c]))).TrimEnd());
            if (row == header)
            {
                stdout.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
            }
        }
    }

    private static TensorData<float> Resource(string name)
    {
        using Stream stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded demo data '{name}' is missing from the tool");
        return NumpyFile.ReadFloat32(stream, "embedded:" + name);
    }
}
