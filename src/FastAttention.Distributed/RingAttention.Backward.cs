using System.Diagnostics;

namespace FastAttention.Distributed;

/// <summary>The backward ring beside the forward.</summary>
public static partial class RingAttention
{
    /// <summary>
    /// The gradients of ring attention with respect to this rank's Q, K and V shards, FlashAttention-2 style: with the forward's
    /// global output rows and log-sum-exp, each (query shard, key/value block) pair's gradients are exact terms of the sums, so
    /// each pair is one call of the core's <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>.
    /// dQ accumulates here; the dK, dV accumulators travel round the ring behind their K, V block (each rank adds its
    /// queries' terms and passes them on), so after P steps every rank's own dK, dV come home complete. The causal piece
    /// logic is the forward's. A collective call.
    /// </summary>
    /// <param name="comm">The ranks.</param>
    /// <param name="queryShard">This rank's queries, <c>[batch, heads, localN, d]</c>.</param>
    /// <param name="keyShard">This rank's keys, <c>[batch, kvHeads, localN, d]</c>.</param>
    /// <param name="valueShard">This rank's values, <c>[batch, kvHeads, localN, dv]</c>.</param>
    /// <param name="outputShard">The forward's output rows, <c>[batch, heads, localN, dv]</c>.</param>
    /// <param name="outputGradientShard">dO for those rows, <c>[batch, heads, localN, dv]</c>.</param>
    /// <param name="logSumExpShard">The forward's log-sum-exp rows, <c>[batch, heads, localN]</c>.</param>
    /// <param name="globalShape">The whole problem, as in the forward.</param>
    /// <param name="queryGradientShard">dQ, <c>[batch, heads, localN, d]</c>.</param>
    /// <param name="keyGradientShard">dK, <c>[batch, kvHeads, localN, d]</c>.</param>
    /// <param name="valueGradientShard">dV, <c>[batch, kvHeads, localN, dv]</c>.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>This rank's steps, bytes (key/value blocks and gradients), compute and wait times.</returns>
    /// <exception cref="DistributedException">As for <see cref="Compute"/>.</exception>
    public static RingRun Backward(Communicator comm, ReadOnlySpan<float> queryShard, ReadOnlySpan<float> keyShard, ReadOnlySpan<float> valueShard, ReadOnlySpan<float> outputShard,
        ReadOnlySpan<float> outputGradientShard, ReadOnlySpan<float> logSumExpShard, AttentionShape globalShape, Span<float> queryGradientShard, Span<float> keyGradientShard,
        Span<float> valueGradientShard, RingAttentionOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(comm);
        var clock = Stopwatch.StartNew();
        var finite = options.Attention.AllowNonFinite ? null
            : RingPlan.NonFinite(queryShard, nameof(queryShard)) ?? RingPlan.NonFinite(keyShard, nameof(keyShard)) ?? RingPlan.NonFinite(valueShard, nameof(valueShard))
            ?? RingPlan.NonFinite(outputGradientShard, nameof(outputGradientShard));
        var plan = RingPlan.Agree(comm, globalShape, options, finite, (queryShard.Length, nameof(queryShard), RingPlan.Kind.Query), (keyShard.Length, nameof(keyShard), RingPlan.Kind.Key),
            (valueShard.Length, nameof(valueShard), RingPlan.Kind.Value), (outputShard.Length, nameof(outputShard), RingPlan.Kind.Output),
            (outputGradientShard.Length, nameof(outputGradientShard), RingPlan.Kind.Output), (logSumExpShard.Length, nameof(logSumExpShard), RingPlan.Kind.LogSumExp),
            (queryGradientShard.Length, nameof(queryGradientShard), RingPlan.Kind.Query), (keyGradientShard.Length, nameof(keyGradientShard), RingPlan.Kind.Key),
            (valueGradientShard.Length, nameof(valueGradientShard), RingPlan.Kind.Value));
        var s = plan.Shape;
        var mine = plan.Rows[comm.Rank];
        int d = s.HeadDim, dv = s.ValueDim;

        float[] query = plan.PackQuerySide(queryShard, mine, d);
        float[] output = plan.PackQuerySide(outputShard, mine, dv);
        float[] outputGradient = plan.PackQuerySide(outputGradientShard, mine, dv);
        float[] lse = plan.PackQuerySide(logSumExpShard, mine, 1);
        float[] queryGradient = new float[query.Length];
        float[] pieceQueryGradient = new float[plan.MaxPiece * plan.OuterQ * d];
        float[] pieceKeyGradient = new float[plan.MaxPiece * plan.OuterKv * d];
        float[] pieceValueGradient = new float[plan.MaxPiece * plan.OuterKv * dv];

        // The block's dK then dV, laid out as the key/value block: this step's terms, the accumulator arriving, the one leaving.
        float[] terms = new float[plan.MaxBlock], arriving = new float[plan.MaxBlock], leaving = new float[plan.MaxBlock];
        var gradientTransfers = new List<Transfer>();
        double flops = 0;

        var ring = new Ring(comm, plan, options.ComputeOnCallingThread, KeyValueTag);
        plan.PackKeyValue(keyShard, valueShard, mine, ring.Current);
        for (int step = 0; step < ring.Steps; step++)
        {
            var source = plan.Rows[ring.Source(step)];
            int blockLength = plan.BlockLength(source);
            ring.Step(step, block =>
            {
                terms.AsSpan(0, blockLength).Clear();
                foreach (var (qi, kj, diagonal, pieceShape) in plan.Pairs(mine, source))
                {
                    int qLength = (int)pieceShape.QueryLength, kLength = (int)pieceShape.KeyLength, vLength = (int)pieceShape.ValueLength;
                    var run = ExactAttention.Backward(mine.Read(query, qi, plan.OuterQ, d), plan.KeyPiece(block, source, kj), plan.ValuePiece(block, source, kj),
                        mine.Read(output, qi, plan.OuterQ, dv), mine.Read(outputGradient, qi, plan.OuterQ, dv), mine.Read(lse, qi, plan.OuterQ, 1), pieceShape,
                        pieceQueryGradient.AsSpan(0, qLength), pieceKeyGradient.AsSpan(0, kLength), pieceValueGradient.AsSpan(0, vLength), plan.BlockOptions(diagonal));
                    flops += run.Flops;
                    Add(mine.Piece(queryGradient, qi, plan.OuterQ, d), pieceQueryGradient.AsSpan(0, qLength));
                    Add(source.Piece(terms, kj, plan.OuterKv, d), pieceKeyGradient.AsSpan(0, kLength));
                    Add(source.Piece(terms.AsSpan(plan.ValueOffset(source)), kj, plan.OuterKv, dv), pieceValueGradient.AsSpan(0, vLength));
                }
            }, gradientTransfers);

            // The accumulator for this block arrived during the step (from rank r - 1, which held the block one step earlier).
            terms.AsSpan(0, blockLength).CopyTo(leaving);
            if (step > 0)
            {
                Add(leaving.AsSpan(0, blockLength), arriving.AsSpan(0, blockLength));
            }

            gradientTransfers.Clear();
            if (ring.Steps > 1)
            {
                int arrivingLength = plan.BlockLength(plan.Rows[ring.Source(step + 1)]);
                gradientTransfers.Add(comm.StartReceive<float>(arriving.AsMemory(0, arrivingLength), ring.Predecessor, GradientTag));
                gradientTransfers.Add(comm.StartSend<float>(leaving.AsMemory(0, blockLength), ring.Successor, GradientTag));
                ring.AddBytes(step, blockLength * sizeof(float)); // leaving is next written after these complete, at the next step's end
            }
        }

        ring.FinishWaiting(gradientTransfers);
        ring.AgreeOnFailure();
        float[] home = ring.Steps > 1 ? arriving : leaving;
        mine.Unpack(queryGradient, queryGradientShard, plan.OuterQ, d);
        mine.Unpack(home.AsSpan(0, plan.ValueOffset(mine)), keyGradientShard, plan.OuterKv, d);
        mine.Unpack(home.AsSpan(plan.ValueOffset(mine), valueGradientShard.Length), valueGradientShard, plan.OuterKv, dv);
        return ring.Result(flops, clock.Elapsed.TotalSeconds);
    }

    private static void Add(Span<float> sum, ReadOnlySpan<float> terms) => System.Numerics.Tensors.TensorPrimitives.Add(sum, terms, sum);
}
