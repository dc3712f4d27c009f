namespace FastAttention.Distributed;

/// <summary>
/// A shard's rows regrouped piece by piece. A shard tensor <c>[outer, Count, width]</c> (outer = batch x heads) stores
/// each outer slice's rows of every piece together; the ring works on "piece-major" copies <c>[piece][outer, count, width]</c>
/// so that one piece of every head is one dense tensor the core's attention takes as it is. With one piece (or one
/// outer slice) the two layouts coincide.
/// </summary>
internal sealed class ShardRows
{
    private readonly long[] _starts;

    public ShardRows(SequenceShard shard)
    {
        Shard = shard;
        Counts = shard.Ranges.Select(r => checked((int)r.Count)).ToArray();
        _starts = new long[Counts.Length];
        for (int p = 1; p < Counts.Length; p++)
        {
            _starts[p] = _starts[p - 1] + Counts[p - 1];
        }

        Count = Counts.Sum();
    }

    public SequenceShard Shard { get; }

    /// <summary>Rows per piece.</summary>
    public int[] Counts { get; }

    /// <summary>Rows in all.</summary>
    public int Count { get; }

    /// <summary>Where piece <paramref name="piece"/> starts in a piece-major tensor of <paramref name="outer"/> slices of rows of <paramref name="width"/>.</summary>
    public int Offset(int piece, int outer, int width) => checked((int)(_starts[piece] * outer * width));

    /// <summary>Piece <paramref name="piece"/> of a piece-major tensor: <c>[outer, count, width]</c>.</summary>
    public Span<float> Piece(Span<float> packed, int piece, int outer, int width) => packed.Slice(Offset(piece, outer, width), Counts[piece] * outer * width);

    /// <summary>Piece <paramref name="piece"/> of a piece-major tensor, read-only.</summary>
    public ReadOnlySpan<float> Read(ReadOnlySpan<float> packed, int piece, int outer, int width) => packed.Slice(Offset(piece, outer, width), Counts[piece] * outer * width);

    /// <summary>Copies a shard tensor into its piece-major form.</summary>
    public void Pack(ReadOnlySpan<float> shard, Span<float> packed, int outer, int width) => Permute(shard, packed, outer, width, toPacked: true);

    /// <summary>Copies a piece-major tensor back into the shard's storage order.</summary>
    public void Unpack(ReadOnlySpan<float> packed, Span<float> shard, int outer, int width) => Permute(packed, shard, outer, width, toPacked: false);

    private void Permute(ReadOnlySpan<float> from, Span<float> to, int outer, int width, bool toPacked)
    {
        for (int o = 0; o < outer; o++)
        {
            for (int p = 0; p < Counts.Length; p++)
            {
                int rows = Counts[p] * width;
                int inShard = checked((int)(((long)o * Count + _starts[p]) * width));
                int inPacked = Offset(p, outer, width) + (o * rows);
                (toPacked ? from.Slice(inShard, rows) : from.Slice(inPacked, rows)).CopyTo(toPacked ? to.Slice(inPacked, rows) : to.Slice(inShard, rows));
            }
        }
    }
}
