namespace FastAttention.Distributed.Worker;

public static partial class Scenarios
{
    /// <summary>
    /// Sharded LevAttention (top k with GQA, then a zig-zag threshold with power 3 and always-kept keys, 2 kv heads) against
    /// one process: every rank checks the kept set (identical), its keys' scores and its query rows of the output.
    /// </summary>
    [Scenario("lev")]
    private static string Lev(Communicator comm, string[] args)
    {
        var cases = new (AttentionShape Shape, LevAttentionOptions Options, ShardLayout Layout)[]
        {
            (new AttentionShape(1, 4, 23, 45, 8, 5, KeyValueHeadCount: 2), new LevAttentionOptions { Top = 6 }, ShardLayout.Contiguous),
            (new AttentionShape(1, 2, 7, 30, 6, 4), new LevAttentionOptions { Eps = 0.2, Power = 3, KeepFirst = 1, KeepLast = 2 }, ShardLayout.ZigZag),
        };
        int kept = 0;
        foreach (var (shape, options, layout) in cases)
        {
            float[] q = ShardSlices.Normal(shape.QueryLength, 7), k = ShardSlices.Normal(shape.KeyLength, 8), v = ShardSlices.Normal(shape.ValueLength, 9);
            float[] expected = new float[shape.OutputLength];
            IReadOnlyList<LevSelection> single = LevAttention.Compute(q, k, v, shape, expected, options);

            var queryShard = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, layout);
            var keyShard = SequenceShard.For(shape.KeyCount, comm.Rank, comm.Size, layout);
            float[] local = new float[(long)shape.BatchSize * shape.HeadCount * queryShard.Count * shape.ValueDim];
            var selections = DistributedLevAttention.Compute(comm, ShardSlices.Take(q, queryShard, shape.HeadDim), ShardSlices.Take(k, keyShard, shape.HeadDim),
                ShardSlices.Take(v, keyShard, shape.ValueDim), shape, queryShard, keyShard, local, options);
            for (int x = 0; x < single.Count; x++)
            {
                Require(single[x].Keys.SequenceEqual(selections[x].Selection.Keys), $"head {x}: kept [{string.Join(",", selections[x].Selection.Keys)}], one process [{string.Join(",", single[x].Keys)}]");
                Require(selections[x].LocalBounds.Length == keyShard.Count, $"head {x}: {selections[x].LocalBounds.Length} local bounds for {keyShard.Count} keys");
                kept += single[x].Keys.Length;
            }

            // 1e-5: the same kept keys in the same order; only the kernel's float32 rounding over fewer queries may differ.
            float[] mine = ShardSlices.Take(expected, queryShard, shape.ValueDim);
            for (int i = 0; i < mine.Length; i++)
            {
                Require(Math.Abs(mine[i] - local[i]) <= 1e-5f, $"output {i}: {local[i]} vs one process {mine[i]}");
            }
        }

        return $"lev kept {kept} keys over {cases.Length} cases; {comm.BytesSent} bytes sent";
    }

    /// <summary>
    /// A measurement, not a test: <c>lev-time n d top</c> times one process's LevAttention (every rank runs it whole) against
    /// the sharded run of the same problem (n queries and keys, one head) and checks the kept sets agree.
    /// </summary>
    [Scenario("lev-time")]
    private static string LevTime(Communicator comm, string[] args)
    {
        int n = int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture), d = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        var options = new LevAttentionOptions { Top = int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) };
        var shape = new AttentionShape(1, 1, n, n, d, d);
        float[] q = ShardSlices.Normal(shape.QueryLength, 1), k = ShardSlices.Normal(shape.KeyLength, 2), v = ShardSlices.Normal(shape.ValueLength, 3);
        var shard = SequenceShard.For(n, comm.Rank, comm.Size, ShardLayout.Contiguous);
        float[] localQ = ShardSlices.Take(q, shard, d), localK = ShardSlices.Take(k, shard, d), localV = ShardSlices.Take(v, shard, d), local = new float[localQ.Length];
        IReadOnlyList<DistributedLevSelection> selections = [];
        IReadOnlyList<LevSelection> single = [];
        (double sharded, double whole) = TimeBoth(comm,
            () => selections = DistributedLevAttention.Compute(comm, localQ, localK, localV, shape, shard, shard, local, options),
            () => single = LevAttention.Compute(q, k, v, shape, new float[shape.OutputLength], options));
        Require(single[0].Keys.SequenceEqual(selections[0].Selection.Keys), "kept sets differ");
        return $"lev-time n {n} d {d}: sharded {sharded:F1} ms, one process {whole:F1} ms, {comm.BytesSent} bytes sent";
    }

    /// <summary>Milliseconds of the sharded run (all ranks, between barriers) and of the one-process run, each the second of two runs (the first pays for the JIT).</summary>
    private static (double Sharded, double Whole) TimeBoth(Communicator comm, Action sharded, Action whole)
    {
        double shardedMs = 0, wholeMs = 0;
        for (int run = 0; run < 2; run++)
        {
            comm.Barrier();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            sharded();
            comm.Barrier();
            shardedMs = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            whole();
            wholeMs = clock.Elapsed.TotalMilliseconds;
        }

        return (shardedMs, wholeMs);
    }
}
