namespace FastAttention.Distributed;

/// <summary>How a sequence of tokens is split over ranks.</summary>
public enum ShardLayout
{
    /// <summary>Rank r holds the r-th of P contiguous pieces, <c>[r n / P, (r + 1) n / P)</c>.</summary>
    Contiguous,

    /// <summary>
    /// The sequence is cut into 2P pieces and rank r holds pieces r and 2P - 1 - r (in that order), so that under a causal
    /// mask every rank has the same amount of work (one early and one late piece), as ring-flash-attention's zig-zag layout.
    /// </summary>
    ZigZag,
}

/// <summary>
/// One rank's tokens of a sequence: the global ranges it holds, in the order its shard stores them. A shard tensor
/// <c>[batch, heads, Count, d]</c> holds, for every (batch, head), the rows of <see cref="Ranges"/> one after another.
/// </summary>
/// <param name="Rank">The rank.</param>
/// <param name="Ranks">The number of ranks.</param>
/// <param name="Length">The global sequence length.</param>
/// <param name="Layout">The layout.</param>
/// <param name="Ranges">The global token ranges, each (start, count), in storage order; a count may be 0 when the sequence is shorter than the pieces.</param>
public sealed record SequenceShard(int Rank, int Ranks, long Length, ShardLayout Layout, IReadOnlyList<(long Start, long Count)> Ranges)
{
    /// <summary>The number of tokens this rank holds.</summary>
    public long Count => Ranges.Sum(r => r.Count);

    /// <summary>The global position of the shard's <paramref name="local"/>-th token.</summary>
    /// <param name="local">A row of the shard, 0 to <see cref="Count"/> - 1.</param>
    /// <returns>Its position in the whole sequence.</returns>
    public long GlobalPosition(long local)
    {
        foreach (var (start, count) in Ranges)
        {
            if (local < count)
            {
                return start + local;
            }

            local -= count;
        }

        throw new ArgumentOutOfRangeException(nameof(local), local, $"the shard holds {Count} tokens.");
    }

    /// <summary>The shard of rank <paramref name="rank"/> of <paramref name="ranks"/> for a sequence of <paramref name="length"/> tokens.</summary>
    /// <param name="length">The global sequence length, at least 0.</param>
    /// <param name="rank">The rank, 0 to ranks - 1.</param>
    /// <param name="ranks">The number of ranks, at least 1.</param>
    /// <param name="layout">The layout.</param>
    /// <returns>The shard.</returns>
    public static SequenceShard For(long length, int rank, int ranks, ShardLayout layout)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        if ((uint)rank >= (uint)ranks)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"rank must be from 0 to {ranks - 1}.");
        }

        return layout switch
        {
            ShardLayout.Contiguous => new(rank, ranks, length, layout, [Piece(length, rank, ranks)]),
            ShardLayout.ZigZag => new(rank, ranks, length, layout, [Piece(length, rank, 2 * ranks), Piece(length, (2 * ranks) - 1 - rank, 2 * ranks)]),
            _ => throw new ArgumentOutOfRangeException(nameof(layout), layout, "unknown layout."),
        };
    }

    /// <summary>Piece <paramref name="index"/> of <paramref name="pieces"/> near-equal pieces: <c>[index n / pieces, (index + 1) n / pieces)</c>.</summary>
    private static (long Start, long Count) Piece(long length, int index, int pieces)
    {
        long start = (long)((Int128)length * index / pieces);
        long end = (long)((Int128)length * (index + 1) / pieces);
        return (start, end - start);
    }
}
