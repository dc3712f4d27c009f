using System.Runtime.ExceptionServices;

namespace FastAttention.Distributed;

/// <summary>
/// The checks every sharded entry point makes before its first message: the global shape and options, each shard against
/// the communicator and the global length, and each local tensor's length against the shard; then one gather of every
/// rank's descriptor (the global dimensions and the options that shape the collectives) compared with rank 0's, so that
/// no rank leaves alone and no two ranks feed collectives of different lengths. The messages name the parameter and
/// show actual against expected, as the core's validator does.
/// </summary>
internal static class ShardInputs
{
    /// <summary>The descriptor entries of an <see cref="AttentionShape"/>, in the order of <see cref="Describe(AttentionShape)"/>.</summary>
    public const string ShapeLegend = "batch, heads, nq, nk, d, dv, kvHeads";

    /// <summary>
    /// A call's options as the descriptor compares them: their legend, their values (bits for floating point, so equal
    /// options give equal entries), the check that refuses bad ones, and why inputs must be finite.
    /// </summary>
    public sealed record Call(string Legend, long[] Values, Action Validate, string FiniteReason);

    public static long[] Describe(AttentionShape shape) =>
        [shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, shape.KeyValueHeadCount];

    /// <summary>An optional number as a descriptor entry: its bits, or a value no double has.</summary>
    public static long Bits(double? x) => x is { } v ? BitConverter.DoubleToInt64Bits(v) : long.MinValue;

    /// <summary>The global shape: every size at least 1, the kv heads dividing the heads.</summary>
    public static void CheckShape(AttentionShape shape)
    {
        if (shape.BatchSize < 1 || shape.HeadCount < 1 || shape.QueryCount < 1 || shape.KeyCount < 1 || shape.HeadDim < 1 || shape.ValueDim < 1
            || shape.KeyValueHeadCount < 0 || shape.HeadCount % shape.EffectiveKeyValueHeads != 0)
        {
            throw new ArgumentException($"shape: every size must be at least 1 and the kv heads must divide the heads; got ({shape}).", nameof(shape));
        }
    }

    /// <summary>Both shards against the communicator and a checked global shape; returns the local query and key counts.</summary>
    public static (int Queries, int Keys) Shards(Communicator comm, AttentionShape shape, SequenceShard queryShard, SequenceShard keyShard)
    {
        ArgumentNullException.ThrowIfNull(queryShard);
        ArgumentNullException.ThrowIfNull(keyShard);
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

    /// <summary>Every value must be finite; names the first bad row and <paramref name="reason"/>.</summary>
    public static void Finite(ReadOnlySpan<float> values, int width, string parameter, string reason)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                throw new ArgumentException($"{parameter}: value {i % width} of local row {i / width} is {values[i].ToString(System.Globalization.CultureInfo.InvariantCulture)}; {reason}.", parameter);
            }
        }
    }

    /// <summary>
    /// The whole check of a sharded attention call. Global problems (shape, options) depend only on the descriptor, so when
    /// every rank's descriptor is rank 0's they are the same on every rank and each rank throws its own ArgumentException.
    /// A descriptor unlike rank 0's, or a bad shard, tensor length or non-finite value on any rank, makes every rank throw
    /// the same <see cref="DistributedException"/>. Returns the local query and key counts.
    /// </summary>
    public static (int Queries, int Keys) Attention(Communicator comm, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape,
        SequenceShard queryShard, SequenceShard keyShard, Span<float> destination, Call call)
    {
        ArgumentNullException.ThrowIfNull(comm);
        int d = shape.HeadDim, dv = shape.ValueDim;
        Exception? global = null, local = null;
        int nq = 0, nk = 0;
        try
        {
            CheckShape(shape);
            call.Validate();
        }
        catch (ArgumentException e)
        {
            global = e;
        }

        if (global is null)
        {
            try
            {
                (nq, nk) = Shards(comm, shape, queryShard, keyShard);
                long queryHeads = (long)shape.BatchSize * shape.HeadCount, keyHeads = (long)shape.BatchSize * shape.EffectiveKeyValueHeads;
                Length(query.Length, queryHeads, nq, d, nameof(query), "[batch, heads, local nq, d]");
                Length(key.Length, keyHeads, nk, d, nameof(key), "[batch, kvHeads, local nk, d]");
                Length(value.Length, keyHeads, nk, dv, nameof(value), "[batch, kvHeads, local nk, dv]");
                Length(destination.Length, queryHeads, nq, dv, nameof(destination), "[batch, heads, local nq, dv]");
                Finite(query, d, nameof(query), call.FiniteReason);
                Finite(key, d, nameof(key), call.FiniteReason);
                Finite(value, dv, nameof(value), call.FiniteReason);
            }
            catch (Exception e) when (e is ArgumentException or OverflowException)
            {
                local = e;
            }
        }

        Agree(comm, [.. Describe(shape), .. call.Values], $"{ShapeLegend}, {call.Legend}", global, local);
        return (nq, nk);
    }

    /// <summary>
    /// Compares every rank's <paramref name="descriptor"/> with rank 0's (one gather) and makes the checks collective: with
    /// equal descriptors a <paramref name="global"/> failure (one that follows from the descriptor alone, so every rank has
    /// it) is rethrown as it is on every rank; otherwise the first rank's global failure, descriptor mismatch or
    /// <paramref name="local"/> failure becomes every rank's <see cref="DistributedException"/>.
    /// </summary>
    public static void Agree(Communicator comm, long[] descriptor, string legend, Exception? global, Exception? local)
    {
        // The flag makes a global failure part of the descriptor, so equal descriptors mean every rank failed or none did.
        long[][] all = comm.Allgather<long>([.. descriptor, global is null ? 0 : 1]);
        bool mine = all[comm.Rank].AsSpan().SequenceEqual(all[0]);
        if (global is not null && all.All(x => x.AsSpan().SequenceEqual(all[0])))
        {
            ExceptionDispatchInfo.Throw(global);
        }

        Exception? mismatch = mine ? null : new ArgumentException($"every rank must pass the same global shape and options: rank 0 has ({string.Join(", ", all[0])}), "
            + $"rank {comm.Rank} has ({string.Join(", ", all[comm.Rank])}) ({legend}, bad shape or options).", "shape");
        comm.Agree(global ?? mismatch ?? local);
    }
}
