using System.Diagnostics;

namespace FastAttention.Distributed;

/// <summary>
/// Exact, sequence-parallel softmax attention (Ring Attention, Liu, Zaharia and Abbeel 2023): each of the P ranks holds its
/// <see cref="SequenceShard"/> of Q, K and V, and the key/value blocks travel round the ring of ranks (r sends to r + 1)
/// while every rank attends its queries to the block it holds. At step s rank r holds rank (r - s) mod P's block; it posts
/// the send of that block and the receive of the next before computing, so the transfer overlaps the computation. Each
/// (query piece, key piece) pair is one call of the core's <see cref="ExactAttention"/> with log-sum-exp, and the block
/// partials combine through <see cref="AttentionPartial.Merge"/>, so the result is exact up to the re-association of the
/// softmax sums across blocks. Under a causal mask the pieces are compared by global position: a key piece wholly in the
/// past is a full block, the query's own piece a causal square, a future piece is skipped (ring-flash-attention's
/// zig-zag layout gives every rank the same work).
/// <para>
/// Shard tensors are the global tensors' rows of the shard, in the shard's storage order:
/// query <c>[batch, heads, localN, d]</c>, key <c>[batch, kvHeads, localN, d]</c>, value <c>[batch, kvHeads, localN, dv]</c>,
/// output <c>[batch, heads, localN, dv]</c>, log-sum-exp <c>[batch, heads, localN]</c>, with localN =
/// <c>SequenceShard.For(n, rank, P, layout).Count</c>. Self-attention only: the global query and key counts are equal and
/// Q and K/V are sharded alike. Every rank must call with the same global shape and options.
/// </para>
/// </summary>
public static partial class RingAttention
{
    /// <summary>The point-to-point tags the ring uses (key/value blocks, and the backward's travelling gradients); a caller's own messages between neighbours should avoid them.</summary>
    public const int KeyValueTag = 16000, GradientTag = 16001;

    /// <summary>
    /// The forward pass: this rank's rows of <c>softmax(s Q K^T) V</c> over the whole sequence, and their log-sum-exp
    /// (what <see cref="Backward"/> and any further merge need). A collective call: every rank of <paramref name="comm"/> calls it.
    /// </summary>
    /// <param name="comm">The ranks; rank r holds shard r.</param>
    /// <param name="queryShard">This rank's queries, <c>[batch, heads, localN, d]</c>.</param>
    /// <param name="keyShard">This rank's keys, <c>[batch, kvHeads, localN, d]</c>.</param>
    /// <param name="valueShard">This rank's values, <c>[batch, kvHeads, localN, dv]</c>.</param>
    /// <param name="globalShape">The whole problem: QueryCount = KeyCount = the sequence length n.</param>
    /// <param name="destinationShard">This rank's output rows, <c>[batch, heads, localN, dv]</c>.</param>
    /// <param name="logSumExpShard">This rank's rows' log-sum-exp in base e, <c>[batch, heads, localN]</c>.</param>
    /// <param name="options">Attention options and the shard layout.</param>
    /// <returns>This rank's steps, bytes, compute and wait times.</returns>
    /// <exception cref="DistributedException">On every rank, when any rank's input is invalid (the message names the rank, the
    /// parameter and the problem; on that rank the inner exception is the <see cref="ArgumentException"/>), or a peer failed.
    /// Shapes, options, lengths and (unless <see cref="ExactAttentionOptions.AllowNonFinite"/>) finiteness are checked on every rank before
    /// any block is sent. A block that fails later (an <see cref="OverflowException"/> from finite inputs) stops that rank's work, the
    /// ring still completes, and every rank then throws the same agreed exception.</exception>
    public static RingRun Compute(Communicator comm, ReadOnlySpan<float> queryShard, ReadOnlySpan<float> keyShard, ReadOnlySpan<float> valueShard, AttentionShape globalShape,
        Span<float> destinationShard, Span<float> logSumExpShard, RingAttentionOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(comm);
        var clock = Stopwatch.StartNew();
        var finite = options.Attention.AllowNonFinite ? null
            : RingPlan.NonFinite(queryShard, nameof(queryShard)) ?? RingPlan.NonFinite(keyShard, nameof(keyShard)) ?? RingPlan.NonFinite(valueShard, nameof(valueShard));
        var plan = RingPlan.Agree(comm, globalShape, options, finite, (queryShard.Length, nameof(queryShard), RingPlan.Kind.Query), (keyShard.Length, nameof(keyShard), RingPlan.Kind.Key),
            (valueShard.Length, nameof(valueShard), RingPlan.Kind.Value), (destinationShard.Length, nameof(destinationShard), RingPlan.Kind.Output),
            (logSumExpShard.Length, nameof(logSumExpShard), RingPlan.Kind.LogSumExp));
        var s = plan.Shape;
        var mine = plan.Rows[comm.Rank];

        float[] query = plan.PackQuerySide(queryShard, mine, s.HeadDim);
        float[] output = new float[mine.Count * plan.OuterQ * s.ValueDim];
        var statistics = new AttentionPartial[mine.Count * plan.OuterQ];
        Array.Fill(statistics, AttentionPartial.Empty);
        float[] blockOutput = new float[plan.MaxPiece * plan.OuterQ * s.ValueDim];
        float[] blockLse = new float[plan.MaxPiece * plan.OuterQ];
        double flops = 0;

        var ring = new Ring(comm, plan, options.ComputeOnCallingThread, KeyValueTag);
        plan.PackKeyValue(keyShard, valueShard, mine, ring.Current);
        for (int step = 0; step < ring.Steps; step++)
        {
            var source = plan.Rows[ring.Source(step)];
            ring.Step(step, block =>
            {
                foreach (var (qi, kj, diagonal, pieceShape) in plan.Pairs(mine, source))
                {
                    var run = ExactAttention.Compute(mine.Read(query, qi, plan.OuterQ, s.HeadDim), plan.KeyPiece(block, source, kj), plan.ValuePiece(block, source, kj),
                        pieceShape, blockOutput.AsSpan(0, (int)pieceShape.OutputLength), blockLse.AsSpan(0, plan.OuterQ * pieceShape.QueryCount), plan.BlockOptions(diagonal));
                    flops += run.Flops;
                    MergeRows(statistics.AsSpan(mine.Offset(qi, plan.OuterQ, 1), plan.OuterQ * pieceShape.QueryCount), mine.Piece(output, qi, plan.OuterQ, s.ValueDim),
                        blockLse, blockOutput, s.ValueDim);
                }
            });
        }

        ring.AgreeOnFailure();
        float[] lse = new float[statistics.Length];
        for (int row = 0; row < statistics.Length; row++)
        {
            var rowOutput = output.AsSpan(row * s.ValueDim, s.ValueDim);
            AttentionPartial.Normalize(statistics[row], rowOutput, rowOutput);
            lse[row] = statistics[row].LogSumExp;
        }

        mine.Unpack(output, destinationShard, plan.OuterQ, s.ValueDim);
        mine.Unpack(lse, logSumExpShard, plan.OuterQ, 1);
        return ring.Result(flops, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Merges a block's normalised rows (each a partial <c>(lse, 1)</c>) into the running unnormalised rows.</summary>
    private static void MergeRows(Span<AttentionPartial> statistics, Span<float> output, ReadOnlySpan<float> blockLse, ReadOnlySpan<float> blockOutput, int dv)
    {
        for (int row = 0; row < statistics.Length; row++)
        {
            var rowOutput = output.Slice(row * dv, dv);
            statistics[row] = AttentionPartial.Merge(statistics[row], rowOutput, AttentionPartial.FromLogSumExp(blockLse[row]), blockOutput.Slice(row * dv, dv), rowOutput);
        }
    }
}
