using FastAttention.Leverage;

namespace FastAttention.Distributed;

/// <summary>The keys one (batch, kv head) kept over every rank, and this rank's share of the scores.</summary>
/// <param name="Selection">The kept keys in global indices, sorted, with the certificate: the same on every rank and the same set one process selects.</param>
/// <param name="LocalBounds">The scores (leverage scores, or p-sensitivity bounds for power attention) of this rank's keys, in shard storage order.</param>
public sealed record DistributedLevSelection(LevSelection Selection, double[] LocalBounds);

/// <summary>
/// LevAttention (docs/algorithms.md §4) with keys and queries sharded over ranks. Per (batch, kv head): every rank's Gram
/// matrix is summed over ranks (<see cref="DistributedLeverageScores"/>), every rank scores its own keys against the global
/// factor, the universal set (threshold) or the top k is chosen from (score, global index) candidates gathered from every
/// rank — only the local top k travel in top-k mode — exactly as <see cref="UniversalSet.FromBounds"/> and
/// <see cref="UniversalSet.Top"/> choose (ties by lower global index), plus the always-kept first and last keys; then the
/// kept key and value rows are gathered to every rank in global order and each rank attends its query shard over them,
/// as <see cref="LevAttention.Compute(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, LevAttentionOptions)"/> does.
/// <para>
/// The set is reported in global indices, so any <see cref="ShardLayout"/> works. The scores differ from one process's
/// only by the rounding of the re-associated Gram sum (about 1e-15 relative for well-conditioned keys); the set is the
/// one-process set unless a score lies within that rounding of the threshold or of the k-th score.
/// </para>
/// </summary>
public static class DistributedLevAttention
{
    /// <summary>
    /// Computes LevAttention of this rank's query shard over the keys kept from every rank's key shard. Every rank calls it
    /// with the same global <paramref name="shape"/> and <paramref name="options"/>, and its own shards.
    /// </summary>
    /// <param name="comm">The ranks.</param>
    /// <param name="query">This rank's queries, <c>[batch, heads, queryShard.Count, d]</c>.</param>
    /// <param name="key">This rank's keys, <c>[batch, kvHeads, keyShard.Count, d]</c>.</param>
    /// <param name="value">This rank's values, <c>[batch, kvHeads, keyShard.Count, dv]</c>.</param>
    /// <param name="shape">The global dimensions (QueryCount and KeyCount over every rank).</param>
    /// <param name="queryShard">This rank's query tokens.</param>
    /// <param name="keyShard">This rank's key tokens.</param>
    /// <param name="destination">This rank's output, <c>[batch, heads, queryShard.Count, dv]</c>.</param>
    /// <param name="options">Eps or top, power, scale, always-kept keys (global indices).</param>
    /// <returns>Per (batch, kv head), in (batch, kv head) order: the kept keys and this rank's scores.</returns>
    /// <exception cref="ArgumentException">Bad shape or options (on every rank, when every rank passes the same).</exception>
    /// <exception cref="DistributedException">A rank's shard or tensor lengths do not match, its queries, keys or values are not finite, its shape or
    /// options differ from rank 0's, or its attention overflows float32; every rank throws it.</exception>
    public static IReadOnlyList<DistributedLevSelection> Compute(Communicator comm, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape,
        SequenceShard queryShard, SequenceShard keyShard, Span<float> destination, LevAttentionOptions options)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, kvHeads = shape.EffectiveKeyValueHeads;
        (int nq, int nk) = ShardInputs.Attention(comm, query, key, value, shape, queryShard, keyShard, destination,
            new ShardInputs.Call(OptionsLegend, Describe(options), () => LevAttention.ValidateOptions(options), FiniteReason));
        long[] positions = ShardInputs.Positions(keyShard);
        int group = shape.HeadCount / kvHeads;
        var results = new List<DistributedLevSelection>();

        // A head's attention can still fail on one rank alone (its queries overflow float32): that rank stops attending but
        // keeps taking part in every later head's collectives, and the failure is agreed once at the end.
        Exception? failure = null;
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < kvHeads; hk++)
            {
                long kv = ((long)b * kvHeads) + hk;
                ReadOnlySpan<float> k = key.Slice((int)(kv * nk * d), nk * d);
                ReadOnlySpan<float> v = value.Slice((int)(kv * nk * dv), nk * dv);
                (int[] kept, UniversalSetCertificate? certificate, double[] bounds) = Select(comm, k, positions, shape.KeyCount, d, options);
                results.Add(new DistributedLevSelection(new LevSelection(b, hk, kept, certificate), bounds));

                (float[] ks, float[] vs) = GatherKept(comm, k, v, positions, kept, d, dv);
                long firstHead = ((long)b * shape.HeadCount) + (hk * group);
                Span<float> o = destination.Slice((int)(firstHead * nq * dv), group * nq * dv);
                if (nq == 0 || failure is not null)
                {
                    continue;
                }

                if (kept.Length == 0)
                {
                    o.Clear();
                    continue;
                }

                var sub = new AttentionShape(1, group, nq, kept.Length, d, dv, KeyValueHeadCount: 1);
                ReadOnlySpan<float> q = query.Slice((int)(firstHead * nq * d), group * nq * d);
                try
                {
                    Attend(q, ks, vs, sub, o, options);
                }
                catch (Exception e) when (e is ArgumentException or ArithmeticException)
                {
                    failure = e;
                }
            }
        }

        comm.Agree(failure);
        return results;
    }

    /// <summary>
    /// The keys one head keeps over every rank (global indices, sorted, the same on every rank), its certificate (threshold
    /// mode) and the bounds of this rank's keys: the distributed form of the core's per-head selection.
    /// </summary>
    /// <param name="comm">The ranks.</param>
    /// <param name="keys">This rank's keys of one head, <c>[n_r, d]</c>.</param>
    /// <param name="keyShard">Their global positions.</param>
    /// <param name="dimension">d.</param>
    /// <param name="options">Eps or top, power, always-kept keys.</param>
    /// <returns>The kept global indices, the certificate (threshold mode) and the local bounds in storage order.</returns>
    /// <exception cref="ArgumentException">Bad options or d (on every rank, when every rank passes the same).</exception>
    /// <exception cref="DistributedException">A rank's shard or keys do not match, hold non-finite values, or its key count, d or options differ from rank 0's; every rank throws it.</exception>
    public static (int[] Keys, UniversalSetCertificate? Certificate, double[] LocalBounds) Select(Communicator comm, ReadOnlySpan<float> keys, SequenceShard keyShard, int dimension, LevAttentionOptions options)
    {
        ArgumentNullException.ThrowIfNull(comm);
        Exception? global = null, local = null;
        try
        {
            LevAttention.ValidateOptions(options);
            ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
        }
        catch (ArgumentException e)
        {
            global = e;
        }

        if (global is null)
        {
            try
            {
                ArgumentNullException.ThrowIfNull(keyShard);
                int count = ShardInputs.Shard(comm, keyShard, keyShard.Length, nameof(keyShard));
                ShardInputs.Length(keys.Length, 1, count, dimension, nameof(keys), "[local n, d]");
                _ = checked((int)keyShard.Length);
                ShardInputs.Finite(keys, dimension, nameof(keys), FiniteReason);
            }
            catch (Exception e) when (e is ArgumentException or OverflowException)
            {
                local = e;
            }
        }

        // The global key count is in the descriptor: each rank checks its shard against its own, so they must agree.
        ShardInputs.Agree(comm, [keyShard?.Length ?? -1, dimension, .. Describe(options)], $"nk, d, {OptionsLegend}", global, local);
        return Select(comm, keys, ShardInputs.Positions(keyShard!), (int)keyShard!.Length, dimension, options);
    }

    private const string OptionsLegend = "eps bits, top, power bits, scale bits, keep first, keep last";

    private const string FiniteReason = "LevAttention needs finite queries, keys and values, as the one-process LevAttention does";

    /// <summary>The options that decide the selection and the collectives' lengths (not the thread count).</summary>
    private static long[] Describe(LevAttentionOptions options) =>
        [ShardInputs.Bits(options.Eps), options.Top ?? -1, ShardInputs.Bits(options.Power), ShardInputs.Bits(options.Scale), options.KeepFirst, options.KeepLast];

    private static (int[] Keys, UniversalSetCertificate? Certificate, double[] Bounds) Select(Communicator comm, ReadOnlySpan<float> keys, long[] positions, int n, int d, LevAttentionOptions options)
    {
        double p = options.Power > 0 ? options.Power : 2;
        (double[] bounds, int rank) = DistributedLeverageScores.Bounds(comm, keys, d, p, options.MaxDegreeOfParallelism);
        IEnumerable<int> chosen;
        UniversalSetCertificate? certificate = null;
        if (options.Eps is double eps)
        {
            // The core's threshold test, on global indices; the certificate's size and score sum are totals over ranks.
            long[] local = [.. Enumerable.Range(0, bounds.Length).Where(j => bounds[j] >= eps * (1 - 1e-9)).Select(j => positions[j])];
            chosen = comm.Allgather<long>(local).SelectMany(x => x).Select(x => (int)x);
            double[] sum = [bounds.Sum()];
            comm.AllreduceSum(sum);
            // The core's certificate of no bounds carries the size bound for this rank and eps; size and sum are the global ones.
            (_, UniversalSetCertificate shape) = UniversalSet.FromBounds([], rank, eps, p);
            int size = chosen.Count();
            certificate = shape with { Size = size, ScoreSum = sum[0] };
        }
        else
        {
            chosen = Top(comm, bounds, positions, Math.Min(options.Top!.Value, n));
        }

        int[] kept = [.. chosen.Concat(Enumerable.Range(0, Math.Min(options.KeepFirst, n))).Concat(Enumerable.Range(Math.Max(0, n - options.KeepLast), Math.Min(options.KeepLast, n))).Distinct().Order()];
        return (kept, certificate, bounds);
    }

    /// <summary>
    /// The k largest bounds over every rank, ties by lower global index (the order <see cref="UniversalSet.Top"/> keeps):
    /// each rank's own top k under that order are the only candidates that can make the global top k.
    /// </summary>
    private static int[] Top(Communicator comm, double[] bounds, long[] positions, int count)
    {
        // Storage order is global order for both layouts, so the core's O(n) selection breaks ties the same way; any other order is sorted.
        bool increasing = positions.Zip(positions.Skip(1)).All(pair => pair.First < pair.Second);
        int[] local = bounds.Length == 0 ? []
            : increasing ? UniversalSet.Top(bounds, Math.Min(count, bounds.Length))
            : [.. Enumerable.Range(0, bounds.Length).Order(Comparer<int>.Create((x, y) => Compare(bounds[x], positions[x], bounds[y], positions[y]))).Take(count)];
        double[][] scores = comm.Allgather<double>([.. local.Select(j => bounds[j])]);
        long[][] indices = comm.Allgather<long>([.. local.Select(j => positions[j])]);
        var candidates = new List<(double Bound, long Index)>();
        for (int r = 0; r < scores.Length; r++)
        {
            candidates.AddRange(scores[r].Zip(indices[r]));
        }

        candidates.Sort((x, y) => Compare(x.Bound, x.Index, y.Bound, y.Index));
        return [.. candidates.Take(count).Select(c => (int)c.Index)];
    }

    /// <summary>Bound descending (NaN last, as <see cref="double.CompareTo(double)"/> orders it lowest), then index ascending.</summary>
    private static int Compare(double boundX, long indexX, double boundY, long indexY)
    {
        int byBound = boundY.CompareTo(boundX);
        return byBound != 0 ? byBound : indexX.CompareTo(indexY);
    }

    /// <summary>The kept rows of K and V from every rank, in the order of <paramref name="kept"/> (global index order).</summary>
    private static (float[] Keys, float[] Values) GatherKept(Communicator comm, ReadOnlySpan<float> k, ReadOnlySpan<float> v, long[] positions, int[] kept, int d, int dv)
    {
        var mine = new List<int>();
        for (int t = 0; t < positions.Length; t++)
        {
            if (Array.BinarySearch(kept, (int)positions[t]) >= 0)
            {
                mine.Add(t);
            }
        }

        float[] localKeys = new float[mine.Count * d], localValues = new float[mine.Count * dv];
        for (int x = 0; x < mine.Count; x++)
        {
            k.Slice(mine[x] * d, d).CopyTo(localKeys.AsSpan(x * d, d));
            v.Slice(mine[x] * dv, dv).CopyTo(localValues.AsSpan(x * dv, dv));
        }

        long[][] where = comm.Allgather<long>([.. mine.Select(t => positions[t])]);
        float[][] keys = comm.Allgather<float>(localKeys), values = comm.Allgather<float>(localValues);
        float[] ks = new float[kept.Length * d], vs = new float[kept.Length * dv];
        for (int r = 0; r < where.Length; r++)
        {
            for (int x = 0; x < where[r].Length; x++)
            {
                int at = Array.BinarySearch(kept, (int)where[r][x]);
                keys[r].AsSpan(x * d, d).CopyTo(ks.AsSpan(at * d, d));
                values[r].AsSpan(x * dv, dv).CopyTo(vs.AsSpan(at * dv, dv));
            }
        }

        return (ks, vs);
    }

    /// <summary>Softmax or power attention over the kept keys, with the options the core's LevAttention runs them with.</summary>
    private static void Attend(ReadOnlySpan<float> q, float[] keys, float[] values, AttentionShape shape, Span<float> output, LevAttentionOptions options)
    {
        if (options.Power > 0)
        {
            _ = PowerAttention.Compute(q, keys, values, shape, output, new PowerAttentionOptions { Power = (float)options.Power, Scale = options.Scale ?? 1f, MaxDegreeOfParallelism = options.MaxDegreeOfParallelism });
        }
        else
        {
            _ = ExactAttention.Compute(q, keys, values, shape, output, new ExactAttentionOptions { Scale = options.Scale, MaxDegreeOfParallelism = options.MaxDegreeOfParallelism });
        }
    }
}
