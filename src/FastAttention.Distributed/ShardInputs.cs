namespace FastAttention.Distributed;

/// <summary>
/// The checks every sharded attention entry point makes before its first message: the global shape, each shard against
/// the communicator and the global length, and each local tensor's length against the shard. The messages name the
/// parameter and show actual against expected, as the core's validator does.
/// </summary>
internal static class ShardInputs
{
    /// <summary>Checks the global shape and both shards, and returns the local query and key counts.</summary>
    public static (int Queries, int Keys) Check(Communicator comm, AttentionShape shape, SequenceShard queryShard, SequenceShard keyShard)
    {
        ArgumentNullException.ThrowIfNull(comm);
        ArgumentNullException.ThrowIfNull(queryShard);
        ArgumentNullException.ThrowIfNull(keyShard);
        if (shape.BatchSize < 1 || shape.HeadCount < 1 || shape.QueryCount < 1 || shape.KeyCount < 1 || shape.HeadDim < 1 || shape.ValueDim < 1
            || shape.KeyValueHeadCount < 0 || shape.HeadCount % shape.EffectiveKeyValueHeads != 0)
        {
            throw new ArgumentException($"shape: every size must be at least 1 and the kv heads must divide the heads; got ({shape}).", nameof(shape));
        }

        return (Shard(comm, queryShard, shape.QueryCount, nameof(queryShard)), Shard(comm, keyShard, shape.KeyCount, nameof(keyShard)));
    }

    /// <summary>A shard must be this rank's of this communicator's ranks, over the global length; returns its token count.</summary>
    public static int Shard(Communicator comm, SequenceShard shard, long length, string parameter)
    {
        if (shard.Rank != comm.Rank || shard.Ranks != comm.Size || shard.Length != length)
        {
            throw new ArgumentException($"{parameter}: the shard is rank {shard.Rank} of {shard.Ranks} over {shard.Length} tokens; expected rank {comm.Rank} of {comm.Size} over {length} tokens.", parameter);
        }

        return checked((int)shard.Count);
    }

    /// <summary>A local tensor of <paramref name="rows"/> rows of width <paramref name="width"/> per (batch, head) must hold exactly that many elements.</summary>
    public static void Length(int actual, long heads, int rows, int width, string parameter, string layout)
    {
        long expected = heads * rows * width;
        if (actual != expected)
        {
            throw new ArgumentException($"{parameter}: length does not match the shard; got {actual} elements, expected {expected} = {layout} with {rows} rows on this rank.", parameter);
        }
    }

    /// <summary>The global position of every row of the shard, in storage order.</summary>
    public static long[] Positions(SequenceShard shard)
    {
        long[] positions = new long[shard.Count];
        int at = 0;
        foreach (var (start, count) in shard.Ranges)
        {
            for (long t = 0; t < count; t++)
            {
                positions[at++] = start + t;
            }
        }

        return positions;
    }

    /// <summary>Every value must be finite (the polynomial method's range bound would be infinite); names the first bad row.</summary>
    public static void Finite(ReadOnlySpan<float> values, int width, string parameter)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                throw new ArgumentException($"{parameter}: value {i % width} of local row {i / width} is {values[i].ToString(System.Globalization.CultureInfo.InvariantCulture)}; the polynomial method needs finite inputs.", parameter);
            }
        }
    }

    /// <summary>
    /// The whole check of a sharded attention call: a bad shape throws at once (every rank sees the same shape); a bad
    /// shard, tensor length or (with <paramref name="finite"/>) non-finite value on any rank makes every rank throw.
    /// Returns the local query and key counts.
    /// </summary>
    public static (int Queries, int Keys) Attention(Communicator comm, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape,
        SequenceShard queryShard, SequenceShard keyShard, Span<float> destination, bool finite)
    {
        ArgumentNullException.ThrowIfNull(comm);
        int d = shape.HeadDim, dv = shape.ValueDim;
        Exception? failure = null;
        int nq = 0, nk = 0;
        try
        {
            (nq, nk) = Check(comm, shape, queryShard, keyShard);
            long queryHeads = (long)shape.BatchSize * shape.HeadCount, keyHeads = (long)shape.BatchSize * shape.EffectiveKeyValueHeads;
            Length(query.Length, queryHeads, nq, d, nameof(query), "[batch, heads, local nq, d]");
            Length(key.Length, keyHeads, nk, d, nameof(key), "[batch, kvHeads, local nk, d]");
            Length(value.Length, keyHeads, nk, dv, nameof(value), "[batch, kvHeads, local nk, dv]");
            Length(destination.Length, queryHeads, nq, dv, nameof(destination), "[batch, heads, local nq, dv]");
            if (finite)
            {
                Finite(query, d, nameof(query));
                Finite(key, d, nameof(key));
                Finite(value, dv, nameof(value));
            }
        }
        catch (ArgumentException e) when (e.ParamName != nameof(shape))
        {
            failure = e;
        }

        comm.Agree(failure);
        return (nq, nk);
    }
}
