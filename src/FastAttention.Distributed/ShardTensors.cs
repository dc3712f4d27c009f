namespace FastAttention.Distributed;

/// <summary>
/// Copies between a global tensor <c>[outer, n, width]</c> (outer = batch x heads, n the sequence) and one rank's shard tensor
/// <c>[outer, localN, width]</c>, whose rows are the shard's ranges in its storage order (as <see cref="RingAttention"/> takes them).
/// </summary>
public static class ShardTensors
{
    /// <summary>Copies the shard's rows of <paramref name="global"/> into <paramref name="shard"/>.</summary>
    /// <param name="global">The whole tensor, <c>[outer, n, width]</c> with n = <c>sequence.Length</c>.</param>
    /// <param name="sequence">The rank's shard.</param>
    /// <param name="width">Floats per row (d, dv, or 1 for a log-sum-exp).</param>
    /// <param name="shard">The shard tensor, <c>[outer, localN, width]</c>.</param>
    /// <exception cref="ArgumentException">A length does not fit a whole number of outer slices.</exception>
    public static void Take(ReadOnlySpan<float> global, SequenceShard sequence, int width, Span<float> shard)
    {
        int outer = Outer(global.Length, shard.Length, sequence, width, nameof(shard));
        Copy(global, shard, sequence, width, outer, toShard: true);
    }

    /// <summary>Copies a shard tensor's rows into their places in <paramref name="global"/> (the inverse of <see cref="Take"/>).</summary>
    /// <param name="shard">The shard tensor, <c>[outer, localN, width]</c>.</param>
    /// <param name="sequence">The rank's shard.</param>
    /// <param name="width">Floats per row.</param>
    /// <param name="global">The whole tensor, <c>[outer, n, width]</c>; rows of other shards are left as they are.</param>
    /// <exception cref="ArgumentException">A length does not fit a whole number of outer slices.</exception>
    public static void Place(ReadOnlySpan<float> shard, SequenceShard sequence, int width, Span<float> global)
    {
        int outer = Outer(global.Length, shard.Length, sequence, width, nameof(shard));
        Copy(shard, global, sequence, width, outer, toShard: false);
    }

    private static void Copy(ReadOnlySpan<float> from, Span<float> to, SequenceShard sequence, int width, int outer, bool toShard)
    {
        long local = 0;
        foreach (var (start, count) in sequence.Ranges)
        {
            for (int o = 0; o < outer; o++)
            {
                int inGlobal = checked((int)((((long)o * sequence.Length) + start) * width));
                int inShard = checked((int)((((long)o * sequence.Count) + local) * width));
                int rows = checked((int)(count * width));
                (toShard ? from.Slice(inGlobal, rows) : from.Slice(inShard, rows)).CopyTo(toShard ? to.Slice(inShard, rows) : to.Slice(inGlobal, rows));
            }

            local += count;
        }
    }

    private static int Outer(long globalLength, long shardLength, SequenceShard sequence, int width, string shardName)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        long row = sequence.Length * width;
        if (row == 0 || globalLength % row != 0)
        {
            throw new ArgumentException($"the global tensor has {globalLength} floats, not a multiple of n {sequence.Length} x width {width}.", "global");
        }

        long outer = globalLength / row;
        if (shardLength != outer * sequence.Count * width)
        {
            throw new ArgumentException($"{shardName} has {shardLength} floats; [outer {outer}, localN {sequence.Count}, width {width}] is {outer * sequence.Count * width}.", shardName);
        }

        return checked((int)outer);
    }
}
