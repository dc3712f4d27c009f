namespace FastAttention.Distributed;

/// <summary>
/// What every rank of a ring call agrees on: the checked global shape and options, every rank's shard rows (each rank
/// computes all P shards itself, so no lengths travel), and the piece pairs a block contributes.
/// </summary>
internal sealed class RingPlan
{
    private RingPlan(AttentionShape shape, RingAttentionOptions options, ShardRows[] rows)
    {
        Shape = shape;
        Options = options;
        Rows = rows;
        OuterQ = shape.BatchSize * shape.HeadCount;
        OuterKv = shape.BatchSize * shape.EffectiveKeyValueHeads;
        MaxPiece = rows.Max(r => r.Counts.Max());
        MaxBlock = rows.Max(BlockLength);
    }

    /// <summary>A shard span's layout: <c>[outer, localN, width]</c> with outer and width from the global shape.</summary>
    public enum Kind
    {
        Query,
        Key,
        Value,
        Output,
        LogSumExp,
    }

    public AttentionShape Shape { get; }

    public RingAttentionOptions Options { get; }

    /// <summary>Every rank's shard, by rank.</summary>
    public ShardRows[] Rows { get; }

    /// <summary>batch x heads: the query-side slices.</summary>
    public int OuterQ { get; }

    /// <summary>batch x kvHeads: the key/value-side slices.</summary>
    public int OuterKv { get; }

    /// <summary>The longest piece of any rank.</summary>
    public int MaxPiece { get; }

    /// <summary>The longest key/value block of any rank, in floats.</summary>
    public int MaxBlock { get; }

    /// <summary>
    /// Checks this rank's inputs (shape, options, then every span's length, in that order; then <paramref name="values"/>, the
    /// caller's finiteness check), compares the global shape and options with rank 0's, and makes the outcome collective:
    /// every rank returns the plan or every rank throws. A rank failing alone inside a block would leave the others
    /// waiting for its blocks until the timeout, hence the finiteness check here.
    /// </summary>
    public static RingPlan Agree(Communicator comm, AttentionShape shape, RingAttentionOptions options, ArgumentException? values, params (long Length, string Name, Kind Kind)[] spans)
    {
        RingPlan? plan = null;
        Exception? failure = null;
        try
        {
            plan = Check(comm, shape, options, spans);
        }
        catch (Exception e) when (e is ArgumentException or OverflowException)
        {
            failure = e; // a shape whose tensors overflow int indexing fails here, collectively, like any other bad input
        }

        failure ??= values;

        var a = options.Attention;
        long[] descriptor = [shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, shape.EffectiveKeyValueHeads,
            (long)options.Layout, a.Causal ? 1 : 0, a.Scale is { } scale ? BitConverter.SingleToInt32Bits(scale) : long.MinValue, a.AllowNonFinite ? 1 : 0];
        long[][] all = comm.Allgather<long>(descriptor);
        if (failure is null && !all[comm.Rank].AsSpan().SequenceEqual(all[0]))
        {
            failure = new ArgumentException($"every rank must pass the same global shape and options: rank 0 has ({string.Join(", ", all[0])}), rank {comm.Rank} has ({string.Join(", ", descriptor)}) "
                + "(batch, heads, nq, nk, d, dv, kvHeads, layout, causal, scale bits, allow non-finite)", nameof(shape));
        }

        comm.Agree(failure);
        return plan!;
    }

    private static RingPlan Check(Communicator comm, AttentionShape shape, RingAttentionOptions options, (long Length, string Name, Kind Kind)[] spans)
    {
        const string globalShape = "globalShape";
        if (shape.BatchSize < 1 || shape.HeadCount < 1 || shape.QueryCount < 1 || shape.HeadDim < 1 || shape.ValueDim < 1 || shape.KeyValueHeadCount < 0)
        {
            throw new ArgumentException($"{globalShape} ({shape}) needs batch, heads, n, d and dv of at least 1.", globalShape);
        }

        if (shape.QueryCount != shape.KeyCount)
        {
            throw new ArgumentException($"ring attention is self-attention: {globalShape}.QueryCount ({shape.QueryCount}) must equal KeyCount ({shape.KeyCount}).", globalShape);
        }

        if (shape.HeadCount % shape.EffectiveKeyValueHeads != 0)
        {
            throw new ArgumentException($"{globalShape}: kvHeads ({shape.EffectiveKeyValueHeads}) must divide heads ({shape.HeadCount}).", globalShape);
        }

        var a = options.Attention;
        if (!a.Bias.IsEmpty || !a.Mask.IsEmpty || a.Window != 0 || a.Sinks != 0)
        {
            throw new ArgumentException("ring attention takes no bias, mask, window or sinks (options.Attention): the blocks do not see global positions.", nameof(options));
        }

        if (!Enum.IsDefined(options.Layout))
        {
            throw new ArgumentException($"options.Layout {(int)options.Layout} is not a shard layout.", nameof(options));
        }

        var rows = Enumerable.Range(0, comm.Size).Select(r => new ShardRows(SequenceShard.For(shape.QueryCount, r, comm.Size, options.Layout))).ToArray();
        var plan = new RingPlan(shape, options, rows);
        var mine = rows[comm.Rank];
        foreach (var (length, name, kind) in spans)
        {
            var (outer, width, axes) = kind switch
            {
                Kind.Query => (plan.OuterQ, shape.HeadDim, "[batch, heads, localN, d]"),
                Kind.Key => (plan.OuterKv, shape.HeadDim, "[batch, kvHeads, localN, d]"),
                Kind.Value => (plan.OuterKv, shape.ValueDim, "[batch, kvHeads, localN, dv]"),
                Kind.Output => (plan.OuterQ, shape.ValueDim, "[batch, heads, localN, dv]"),
                _ => (plan.OuterQ, 1, "[batch, heads, localN]"),
            };
            long expected = (long)outer * mine.Count * width;
            if (length != expected)
            {
                throw new ArgumentException($"{name} has {length} floats; rank {comm.Rank} of {comm.Size} ({options.Layout}, n = {shape.QueryCount}) holds localN = {mine.Count} tokens, "
                    + $"so {axes} is {expected}.", name);
            }
        }

        return plan;
    }

    /// <summary>The first NaN or infinity of <paramref name="values"/> as an error naming it, or null when every value is finite.</summary>
    public static ArgumentException? NonFinite(ReadOnlySpan<float> values, string name)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return new ArgumentException($"{name}[{i}] is {values[i]}; set options.Attention.AllowNonFinite to let non-finite inputs through.", name);
            }
        }

        return null;
    }

    /// <summary>A rank's key/value block in floats: its keys then its values, both piece-major.</summary>
    public int BlockLength(ShardRows rows) => checked(OuterKv * rows.Count * (Shape.HeadDim + Shape.ValueDim));

    public ReadOnlySpan<float> KeyPiece(float[] block, ShardRows source, int piece) => source.Read(block, piece, OuterKv, Shape.HeadDim);

    public ReadOnlySpan<float> ValuePiece(float[] block, ShardRows source, int piece) => source.Read(block.AsSpan(ValueOffset(source)), piece, OuterKv, Shape.ValueDim);

    /// <summary>Where a block's values start: after its keys.</summary>
    public int ValueOffset(ShardRows source) => OuterKv * source.Count * Shape.HeadDim;

    /// <summary>The attention options of one piece pair: causal only on a diagonal square.</summary>
    public ExactAttentionOptions BlockOptions(bool diagonal) => Options.Attention with { Causal = diagonal };

    /// <summary>
    /// The (query piece, key piece) pairs of a block that need work: all non-empty pairs without a causal mask; with it, key
    /// pieces wholly before the query piece (full blocks) and the query's own piece (a causal square, flagged diagonal).
    /// Pieces come from one cut of the sequence, so two pieces are either the same or disjoint.
    /// </summary>
    public IEnumerable<(int QueryPiece, int KeyPiece, bool Diagonal, AttentionShape Shape)> Pairs(ShardRows queries, ShardRows keys)
    {
        for (int qi = 0; qi < queries.Counts.Length; qi++)
        {
            for (int kj = 0; kj < keys.Counts.Length; kj++)
            {
                var (qStart, qCount) = queries.Shard.Ranges[qi];
                var (kStart, kCount) = keys.Shard.Ranges[kj];
                if (qCount == 0 || kCount == 0)
                {
                    continue;
                }

                bool diagonal = Options.Attention.Causal && kStart == qStart;
                if (Options.Attention.Causal && !diagonal && kStart + kCount > qStart)
                {
                    continue; // a future piece: no query of this piece sees any of its keys
                }

                yield return (qi, kj, diagonal, Shape with { QueryCount = (int)qCount, KeyCount = (int)kCount });
            }
        }
    }

    /// <summary>This rank's queries (or any query-shaped shard tensor), piece-major.</summary>
    public float[] PackQuerySide(ReadOnlySpan<float> shard, ShardRows mine, int width)
    {
        float[] packed = new float[shard.Length];
        mine.Pack(shard, packed, OuterQ, width);
        return packed;
    }

    /// <summary>This rank's keys and values into a block.</summary>
    public void PackKeyValue(ReadOnlySpan<float> key, ReadOnlySpan<float> value, ShardRows mine, float[] block)
    {
        mine.Pack(key, block.AsSpan(0, ValueOffset(mine)), OuterKv, Shape.HeadDim);
        mine.Pack(value, block.AsSpan(ValueOffset(mine), value.Length), OuterKv, Shape.ValueDim);
    }
}
