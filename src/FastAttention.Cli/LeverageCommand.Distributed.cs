using FastAttention.Distributed;
using FastAttention.Leverage;

namespace FastAttention.Cli;

/// <summary><c>fastattn leverage --distributed</c>: the keys' rows split over ranks, the Gram matrix summed over them, the set chosen once.</summary>
internal static partial class LeverageCommand
{
    private static int RunDistributed(ParsedOptions o, TextWriter stdout) => DistributedRun.Run("leverage", job =>
    {
        Settings settings = job.Agree(() =>
        {
            Settings parsed = Parse(o);
            if (parsed.Stream || parsed.Method != LeverageMethod.Exact)
            {
                throw new UsageException("--distributed computes exact scores (a Gram matrix summed over the ranks); drop --stream and --method");
            }

            return parsed;
        });
        (int[] shape, int heads, int n, int d) = job.Agree(() =>
        {
            int[] k = DistributedRun.InputShape("k", settings.KeyPath);
            (_, int h, int rows, int width) = KeyShape(k, settings.OutPath);
            return (k, h, rows, width);
        });

        // Leverage scores have no causal structure: contiguous rows keep the gathered scores in global order.
        SequenceShard shard = SequenceShard.For(n, job.Comm.Rank, job.Comm.Size, ShardLayout.Contiguous);
        TensorData<float> keys = job.Agree(() => DistributedRun.ReadShard("k", settings.KeyPath, shard, "Every input must be finite."));
        Progress.Current.Step("computing leverage scores");
        int local = (int)shard.Count;
        var sets = new List<long[]>();
        var certificates = new List<UniversalSetCertificate?>();
        var allScores = new double[(long)heads * n];
        for (int h = 0; h < heads; h++)
        {
            (double[] mine, int rank) = DistributedLeverageScores.SensitivityBounds(job.Comm, keys.Data.AsSpan(h * local * d, local * d), d, settings.P, settings.Threads);
            double[] bounds = [.. job.Comm.Allgather<double>(mine).SelectMany(x => x)];
            bounds.CopyTo(allScores, (long)h * n);
            Select(bounds, rank, settings, sets, certificates);
        }

        long bytes = job.TotalBytesSent();

        // Rank 0 alone writes the (small) index sets; the others wait for its verdict, so a failed write fails them all.
        int code = job.Agree(() => job.IsRoot
            ? Finish(o, stdout, settings, shape, sets, certificates, allScores, w =>
            {
                w.WriteNumber("ranks", job.Comm.Size);
                w.WriteString("transport", job.Comm.Transport);
                w.WriteNumber("bytesSent", bytes);
                w.WriteNumber("seconds", job.Seconds);
            })
            : ExitCode.Ok);
        return code;
    });
}
