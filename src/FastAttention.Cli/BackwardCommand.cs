using System.Globalization;
using FastAttention.IO;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn backward</c>: the gradients dQ, dK, dV (tensor attention: dQ, dK1, dK2, dV1, dV2) of a method of the lab's
/// <see cref="MethodTable"/> for a given dO, by the method's training forward and backward (<see cref="MethodEntry.Backward"/>),
/// written to one <c>.npz</c>.
/// </summary>
internal static class BackwardCommand
{
    /// <summary>The input options of the methods over one key/value tensor and of the tensor methods.</summary>
    private static readonly string[] OneKey = ["k", "v"], TwoKeys = ["k1", "k2", "v1", "v2"];

    /// <summary>Which methods accept each method-specific option (the key and value inputs included: tensor methods take two of each).</summary>
    private static readonly (string Option, string[] Methods)[] OptionsOfMethods =
        MethodOptions.OptionTable(MethodTable.All.Select(m => (m.Name, (IReadOnlyList<string>)[.. m.Options, .. m.IsTensor ? TwoKeys : OneKey])));

    public static Command Command { get; } = new(
        "backward",
        "gradients dQ, dK, dV of attention for a given dO (training forward + backward), written to one .npz",
        [
            new("q", "Q.npy", "queries [n,d], [h,n,d] or [b,h,n,d] (required)"),
            new("k", "K.npy", "keys, same rank; fewer heads for grouped-query attention (required, except for tensor methods)"),
            new("v", "V.npy", "values, K's shape with any last dimension (required, except for tensor methods)"),
            new("k1", "K1.npy", "tensor methods: first keys, [nk, d] or [h, nk, d]"),
            new("k2", "K2.npy", "tensor methods: second keys, K1's shape"),
            new("v1", "V1.npy", "tensor methods: first values, [nk, dv] or [h, nk, dv]"),
            new("v2", "V2.npy", "tensor methods: second values, V1's shape"),
            new("dout", "DO.npy", "dO, the loss's gradient with respect to the output: the output's shape, Q's with V's last dimension (required)"),
            new("out", "GRADS.npz", "output .npz holding dq, dk, dv (tensor methods: dq, dk1, dk2, dv1, dv2), each in its input's shape (required)"),
            MethodOptions.MethodOption(MethodTable.All.Select(m => (m.Name, (m.HasBackward ? string.Empty : "(no backward yet) ") + m.Summary)), "exact"),
            new("scale", "S", "score scale s (default 1/sqrt(d); power: 1; tensor: 1/d)"),
            new("causal", null, "causal mask, bottom-right aligned when nq != nk"),
            new("power", "P", "power: the exponent p of |s q.k|^p (default 2); also --p") { Aliases = ["p"] },
            new("eps", "E", "poly: target relative error of the polynomial; lev: keep each head's universal set {j : leverage score >= E}"),
            new("degree", "G", "poly: force the polynomial degree"),
            new("sketch", "M", "sketch: sketch size m (default 32)"),
            new("seed", "S", "sketch: seed of the Gaussian sketch (default 0)"),
            new("top", "N", "lev: keep each head's N keys with the largest leverage scores"),
            new("keep-first", "F", "lev: always keep the first F keys"),
            new("keep-last", "L", "lev: always keep the last L keys"),
            new("window", "W1,W2", "tensor: sliding windows, j1 in the last W1 positions, j2 in the last W2 (implies causal)"),
            new("threads", "T", "worker threads (default: all cores); the gradients' bits do not depend on it"),
            new("kernel", "NAME", "exact/power: force a kernel: " + string.Join(", ", AttentionKernels.Names)),
            new("allow-nonfinite", null, "exact: let NaN/Inf in the inputs and dO propagate instead of rejecting them"),
            new("force", null, "overwrite --out if it exists"),
            new("json", null, "print a one-object JSON summary"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string method = o.Get("method") ?? "exact";
        MethodEntry entry = MethodTable.Find(method);
        if (entry.Backward is not MethodBackward backward)
        {
            throw new UsageException("backward: --method " + MethodTable.NoBackward(method));
        }

        o.RejectOptionsOfOtherMethods("backward", method, OptionsOfMethods);

        // Every option is checked before any file is read or written.
        string[] names = ["q", .. entry.IsTensor ? TwoKeys : OneKey, "dout"];
        string[] paths = [.. names.Select(name => o.Required("backward", name))];
        o.Required("backward", "out");
        int[]? windows = TensorCommand.Windows(o.Get("window"));
        MethodSettings settings = MethodOptions.Settings(o, "backward", entry, o.Threads() ?? 0) with { Windows = windows };
        TensorFiles.CheckTensorOutput(o, "out", ".npz");
        string outPath = o.Get("out")!;

        string? nonFinite = settings.AllowNonFinite ? null
            : entry.Accepts("allow-nonfinite") ? "Pass --allow-nonfinite to let non-finite values propagate through exact attention."
            : $"{entry.Name} takes finite inputs only.";
        TensorData<float>[] tensors = [.. names.Select((name, i) => TensorFiles.Load(name, paths[i], nonFinite))];
        TensorData<float>[] inputs = tensors[..^1];
        TensorData<float> dout = tensors[^1];
        AttentionShape shape = entry.IsTensor ? Flat(TensorCommand.Shape(inputs[0], [inputs[1], inputs[2]], [inputs[3], inputs[4]])) : AttentionInputs.Shape(inputs[0], inputs[1], inputs[2]);
        int[] outShape = AttentionInputs.OutputShape(inputs[0], shape);
        if (!dout.Shape.SequenceEqual(outShape))
        {
            throw new BadInputException($"--dout has shape {dout.ShapeText} but the output's shape is {TensorData.FormatShape(outShape)} (--q's shape with --{names[^2]}'s last dimension)");
        }

        int keyTensors = entry.IsTensor ? 2 : 1;
        var methodInputs = new MethodInputs(inputs[0].Data, [.. inputs[1..(1 + keyTensors)].Select(t => (ReadOnlyMemory<float>)t.Data)], [.. inputs[(1 + keyTensors)..].Select(t => (ReadOnlyMemory<float>)t.Data)]);
        MethodOptions.Warm(entry, shape, settings, backward: true);
        Progress.Current.Step("computing the forward and the backward");
        MethodGradients result = backward(methodInputs, shape, dout.Data, settings);

        // Each gradient in its input's shape, one .npz, through a temp file and a rename.
        KeyValuePair<string, TensorData>[] arrays = [.. result.Gradients.Select((g, i) => new KeyValuePair<string, TensorData>(g.Name, new TensorData<float>(g.Data, [.. inputs[i].Shape])))];
        TensorFiles.WriteAtomically(outPath, o.Flag("force"), temp => NpzFile.Write(temp, arrays));

        double seconds = result.ForwardSeconds + result.BackwardSeconds;
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", method);
                w.WriteString("kernel", result.Run.Kernel);
                w.WriteString("backwardKernel", result.BackwardKernel);
                Json.WriteShape(w, "outputShape", outShape);
                w.WriteStartObject("shapes");
                for (int i = 0; i < arrays.Length; i++)
                {
                    Json.WriteShape(w, arrays[i].Key, inputs[i].Shape);
                }

                w.WriteEndObject();
                w.WriteNumber("scale", settings.Scale ?? (method == "power" ? 1 : entry.IsTensor ? 1f / shape.HeadDim : 1 / MathF.Sqrt(shape.HeadDim)));
                w.WriteBoolean("causal", settings.Causal || windows is not null);
                w.WriteNumber("threads", settings.Threads == 0 ? Environment.ProcessorCount : settings.Threads);
                w.WriteNumber("seconds", seconds);
                w.WriteNumber("forwardSeconds", result.ForwardSeconds);
                w.WriteNumber("backwardSeconds", result.BackwardSeconds);
                w.WriteNumber("flops", result.Flops);
                w.WriteNumber("forwardFlops", result.ForwardFlops);
                w.WriteNumber("backwardFlops", result.BackwardFlops);
                w.WriteNumber("gflops", result.Flops / Math.Max(seconds, 1e-9) / 1e9);
                w.WriteNumber("backwardGflops", result.BackwardFlops / Math.Max(result.BackwardSeconds, 1e-9) / 1e9);
                w.WriteString("out", outPath);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{method} backward {string.Join(", ", arrays.Select((a, i) => $"{a.Key} {inputs[i].ShapeText}"))} -> {outPath}: forward {result.ForwardSeconds * 1e3:F3} ms + backward {result.BackwardSeconds * 1e3:F3} ms, {result.BackwardFlops / Math.Max(result.BackwardSeconds, 1e-9) / 1e9:F1} GFLOP/s backward (kernels {result.Run.Kernel}, {result.BackwardKernel})"));
        }

        return ExitCode.Ok;
    }

    /// <summary>The table's shape of tensor attention: one batch, a head per query head.</summary>
    private static AttentionShape Flat(TensorAttentionShape shape) => new(1, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim);
}
