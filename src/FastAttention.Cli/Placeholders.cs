using FastAttention.Distributed;

namespace FastAttention.Cli;

// PLACEHOLDER (to delete when the ring helper's FastAttention.Distributed.RingAttention lands in main): the same call shape,
// computed by gathering every rank's rows and running one-process exact attention on each rank. Not ring attention.
internal readonly record struct RingAttentionOptions
{
    public ExactAttentionOptions Attention { get; init; }

    public ShardLayout Layout { get; init; }
}

internal sealed record RingRun(double Flops);

internal static class RingAttention
{
    public static RingRun Compute(Communicator comm, ReadOnlySpan<float> queryShard, ReadOnlySpan<float> keyShard, ReadOnlySpan<float> valueShard, AttentionShape globalShape,
        Span<float> destinationShard, Span<float> logSumExpShard, RingAttentionOptions options)
    {
        _ = logSumExpShard;
        int n = globalShape.QueryCount;
        long outer = (long)globalShape.BatchSize * globalShape.HeadCount, kvOuter = (long)globalShape.BatchSize * globalShape.EffectiveKeyValueHeads;
        float[] q = Gather(comm, queryShard, outer, n, globalShape.HeadDim, options.Layout);
        float[] k = Gather(comm, keyShard, kvOuter, n, globalShape.HeadDim, options.Layout);
        float[] v = Gather(comm, valueShard, kvOuter, n, globalShape.ValueDim, options.Layout);
        var all = new float[globalShape.OutputLength];
        AttentionRun run = ExactAttention.Compute(q, k, v, globalShape, all, options.Attention);
        SequenceShard mine = SequenceShard.For(n, comm.Rank, comm.Size, options.Layout);
        int at = 0;
        for (long b = 0; b < outer; b++)
        {
            foreach ((long start, long count) in mine.Ranges)
            {
                all.AsSpan((int)(((b * n) + start) * globalShape.ValueDim), (int)(count * globalShape.ValueDim)).CopyTo(destinationShard[at..]);
                at += (int)(count * globalShape.ValueDim);
            }
        }

        return new RingRun(run.Flops / comm.Size);
    }

    private static float[] Gather(Communicator comm, ReadOnlySpan<float> shard, long outer, int n, int width, ShardLayout layout)
    {
        float[][] pieces = comm.Allgather(shard);
        var full = new float[outer * n * width];
        for (int r = 0; r < comm.Size; r++)
        {
            SequenceShard theirs = SequenceShard.For(n, r, comm.Size, layout);
            int at = 0;
            for (long b = 0; b < outer; b++)
            {
                foreach ((long start, long count) in theirs.Ranges)
                {
                    pieces[r].AsSpan(at, (int)(count * width)).CopyTo(full.AsSpan((int)(((b * n) + start) * width)));
                    at += (int)(count * width);
                }
            }
        }

        return full;
    }
}

// PLACEHOLDER (to delete when the levpoly helper's FastAttention.Distributed.DistributedLeverageScores lands in main): the same
// call shape, computed by gathering every rank's rows (contiguous, in rank order) and scoring them all on each rank.
internal static class DistributedLeverageScores
{
    public static (double[] Bounds, int Rank) SensitivityBounds(Communicator comm, ReadOnlySpan<float> keys, int dimension, double p = 2, int maxDegreeOfParallelism = 0)
    {
        float[][] pieces = comm.Allgather(keys);
        float[] all = [.. pieces.SelectMany(x => x)];
        (double[] bounds, int rank) = FastAttention.Leverage.UniversalSet.SensitivityBounds(all, dimension, p, maxDegreeOfParallelism);
        int before = pieces.Take(comm.Rank).Sum(x => x.Length) / dimension;
        return (bounds[before..(before + (keys.Length / dimension))], rank);
    }
}
