using System.Diagnostics;
using System.Globalization;
using FastAttention.Distributed;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary><c>fastattn attend --distributed</c>: exact attention by ring attention, each rank holding its rows of the sequence.</summary>
internal static partial class AttendCommand
{
    private static int RunDistributed(ParsedOptions o, TextWriter stdout) => DistributedRun.Run("attend", job =>
    {
        // Options first, collectively: a check that one rank alone fails (a folder it cannot see) stops them all.
        MethodSettings settings = job.Agree(() =>
        {
            o.Required("attend", "q");
            o.Required("attend", "k");
            o.Required("attend", "v");
            o.Required("attend", "out");
            string method = o.Get("method") ?? "exact";
            if (method != "exact")
            {
                throw new UsageException($"--distributed computes exact attention (ring attention over the ranks); --method {method} runs in one process: drop --distributed");
            }

            if (o.Get("kv-dtype") is not null)
            {
                throw new UsageException("--distributed reads float32 keys and values; drop --kv-dtype");
            }

            o.RejectOptionsOfOtherMethods("attend", method, OptionsOfMethods);
            MethodSettings checkedSettings = MethodOptions.Settings(o, "attend", MethodTable.Find(method), o.Threads() ?? 0);
            TensorFiles.CheckTensorOutput(o, "out", ".npy");
            return checkedSettings;
        });
        string qPath = o.Get("q")!, kPath = o.Get("k")!, vPath = o.Get("v")!, outPath = o.Get("out")!;
        (int[] qShape, AttentionShape shape) = job.Agree(() =>
        {
            int[] q = DistributedRun.InputShape("q", qPath), k = DistributedRun.InputShape("k", kPath), v = DistributedRun.InputShape("v", vPath);
            AttentionShape s = AttentionInputs.Shape(q, k, v);
            if (s.QueryCount != s.KeyCount)
            {
                throw new BadInputException($"--distributed splits one sequence over the ranks: --q has {s.QueryCount} queries but --k has {s.KeyCount} keys; they must be equal");
            }

            return (q, s);
        });

        // Zig-zag under a causal mask gives every rank one early and one late piece, so equal work; one rank has nothing to
        // balance, and its one contiguous block is the one-process call, bit for bit.
        ShardLayout layout = settings.Causal && job.Comm.Size > 1 ? ShardLayout.ZigZag : ShardLayout.Contiguous;
        SequenceShard shard = SequenceShard.For(shape.QueryCount, job.Comm.Rank, job.Comm.Size, layout);
        string? nonFinite = settings.AllowNonFinite ? null : "Pass --allow-nonfinite to let non-finite values propagate through exact attention.";
        (TensorData<float> q, TensorData<float> k, TensorData<float> v) = job.Agree(() => (
            DistributedRun.ReadShard("q", qPath, shard, nonFinite), DistributedRun.ReadShard("k", kPath, shard, nonFinite), DistributedRun.ReadShard("v", vPath, shard, nonFinite)));

        Progress.Current.Step("computing attention");
        long rows = (long)shape.BatchSize * shape.HeadCount * shard.Count;
        var output = new float[rows * shape.ValueDim];
        var logSumExp = new float[rows];
        var options = new RingAttentionOptions { Attention = MethodOptions.ExactOptions(settings), Layout = layout };
        var timer = Stopwatch.StartNew();
        RingRun ring = RingAttention.Compute(job.Comm, q.Data, k.Data, v.Data, shape, output, logSumExp, options);
        double seconds = job.Comm.AllreduceMax(timer.Elapsed.TotalSeconds);
        double[] flops = [ring.Flops];
        job.Comm.AllreduceSum(flops);
        long bytes = job.TotalBytesSent();

        int[] outShape = [.. qShape];
        outShape[^1] = shape.ValueDim;
        job.WriteOutput(outPath, o.Flag("force"), outShape, output, shard.Ranges);
        if (!job.IsRoot)
        {
            return ExitCode.Ok;
        }

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("method", "exact");
                w.WriteString("algorithm", "ring");
                Json.WriteShape(w, "shape", outShape);
                w.WriteNumber("scale", settings.Scale ?? (1 / MathF.Sqrt(shape.HeadDim)));
                w.WriteBoolean("causal", settings.Causal);
                w.WriteString("layout", layout == ShardLayout.ZigZag ? "zigzag" : "contiguous");
                w.WriteNumber("ranks", job.Comm.Size);
                w.WriteString("transport", job.Comm.Transport);
                w.WriteNumber("bytesSent", bytes);
                w.WriteNumber("seconds", seconds);
                w.WriteNumber("gflops", flops[0] / Math.Max(seconds, 1e-9) / 1e9);
                w.WriteNumber("totalSeconds", job.Seconds);
                w.WriteString("out", outPath);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"exact attention {TensorData.FormatShape(outShape)} -> {outPath}: ring over {job.Comm.Size} rank(s) ({job.Comm.Transport}, {layout} rows), {seconds * 1e3:F3} ms, {flops[0] / Math.Max(seconds, 1e-9) / 1e9:F1} GFLOP/s, {bytes} bytes sent"));
        }

        return ExitCode.Ok;
    });
}
