using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>
/// The factorised engine's backward (docs/algorithms.md §2.8), in double, for the forward <see cref="Run"/> computes:
/// with <c>Mw = diag(W) sum_j f(k_j) [v_j | 1]^T</c>, <c>[N | z]_i = f(q_i)^T Mw</c> and <c>O_i = N_i / z_i</c>,
/// <list type="number">
/// <item>per query: <c>G_i = [dO_i / z_i | -(dO_i . O_i) / z_i]</c> (z from the normaliser column alone; O is the
/// forward's output), <c>df(q_i) = Mw G_i</c> back through the features to dq_i, and <c>dL/dMw += f(q_i) G_i^T</c>;</item>
/// <item>per key, with <c>dM = diag(W) dL/dMw</c>: <c>df(k_j) = dM [v_j | 1]</c> back to dk_j, and <c>dv_j = dM^T f(k_j)</c>.</item>
/// </list>
/// Grouped-query heads share one dL/dMw, so a kv head's dK, dV sum over its group. Causal: the forward's prefix states
/// become suffix sums of dL/dP over the key blocks, and the diagonal block's direct weights are differentiated directly.
/// Every sum runs in an order fixed by the input, so the gradient bits do not depend on the thread count.
/// </summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>The backward's tensors: the forward's problem (its Output is the forward's output, read), dO, and the three gradients.</summary>
    public readonly struct GradientProblem
    {
        public Problem Forward { get; init; }

        public float* OutputGradient { get; init; }

        public float* QueryGradient { get; init; }

        public float* KeyGradient { get; init; }

        public float* ValueGradient { get; init; }
    }

    public static void RunBackward(in GradientProblem g)
    {
        Problem p = g.Forward;
        GradientProblem all = g;
        int d = p.Shape.HeadDim, dv = p.Shape.ValueDim, nk = p.Shape.KeyCount;
        FeatureMap map = p.Map;
        (double qScale, double kScale, double[] weight, int cPad, int wave) = Setup(p);
        Func<Scratch> scratch = () => new Scratch(map, cPad);
        Func<BackwardScratch> backward = () => new BackwardScratch(map, cPad);
        EachHead(p, qScale, kScale, weight, cPad, (head, kv) =>
        {
            var gradients = new Gradients(all.OutputGradient, all.QueryGradient, all.KeyGradient + (kv * nk * d), all.ValueGradient + (kv * nk * dv));
            if (p.Causal)
            {
                BackwardCausal(head, gradients, scratch, backward);
            }
            else
            {
                BackwardNonCausal(head, gradients, wave, scratch, backward);
            }
        });
    }

    /// <summary>
    /// 1. Mw over all keys (the forward's key pass). 2. Queries in chunks of <see cref="NonCausalChunk"/> per head, in
    /// parallel: dQ, and a partial dL/dMw per chunk, added in chunk order. 3. Key blocks in parallel: dK, dV.
    /// </summary>
    private static void BackwardNonCausal(Head h, Gradients gradients, int wave, Func<Scratch> scratch, Func<BackwardScratch> backward)
    {
        long stateDoubles = (long)h.Map.PaddedCount * h.Columns;
        using var state = new DoubleBuffer(stateDoubles);
        using var normaliser = new DoubleBuffer((long)h.Map.PaddedCount * ColumnTile);
        KeyState(h, wave, scratch, state.Pointer);
        h.ApplyWeight(state.Pointer);
        h.NormaliserColumn(state.Pointer, normaliser.Pointer);

        int nq = h.QueryCount, chunks = (nq + NonCausalChunk - 1) / NonCausalChunk, items = h.Group * chunks;
        using var gradient = new DoubleBuffer(stateDoubles);
        using var partials = new DoubleBuffer(stateDoubles * Math.Min(wave, items));
        gradient.Clear();
        for (int c0 = 0; c0 < items; c0 += wave)
        {
            int count = Math.Min(wave, items - c0);
            ParallelWork.Run(count, h.MaxDegree, backward, (item, s) =>
            {
                double* partial = partials.Pointer + (item * stateDoubles);
                new Span<double>(partial, (int)stateDoubles).Clear();
                int chunk = c0 + item, start = chunk % chunks * NonCausalChunk, end = Math.Min(nq, start + NonCausalChunk);
                for (int i0 = start; i0 < end; i0 += Block)
                {
                    h.QueryBackward(gradients, h.FirstHead + (chunk / chunks), i0, Math.Min(Block, end - i0), state.Pointer, normaliser.Pointer, -1, s, partial);
                }
            });

            for (int item = 0; item < count; item++)
            {
                Add(gradient.Pointer, partials.Pointer + (item * stateDoubles), stateDoubles);
            }
        }

        h.ApplyWeight(gradient.Pointer);
        int nk = h.KeyCount, blocks = (nk + Block - 1) / Block;
        ParallelWork.Run(blocks, h.MaxDegree, backward, (jb, s) =>
            h.KeyBackward(gradients, jb * Block, Math.Min(Block, nk - (jb * Block)), gradient.Pointer, null, null, s));
    }

    /// <summary>
    /// 1. The unweighted state S_b of every key block, in parallel; slot c becomes the weighted prefix <c>W o sum_{b &lt; c} S_b</c>.
    /// 2. In parallel over key blocks c: the queries whose last visible key is in block c (every head of the group), from slot c
    /// and the diagonal block directly; slot c becomes their dL/dP_c, and the diagonal's direct dK, dV are kept per block.
    /// 3. Slot b becomes <c>W o sum_{c &gt; b} dL/dP_c</c> (suffix sums, in block order); key blocks in parallel: dK, dV.
    /// Holds one state per key block: (nk / 128) r (dv + 1) doubles.
    /// </summary>
    private static void BackwardCausal(Head h, Gradients gradients, Func<Scratch> scratch, Func<BackwardScratch> backward)
    {
        int nk = h.KeyCount, nq = h.QueryCount, d = h.Map.Dimension, dv = h.ValueDim;
        long offset = (long)nk - nq; // query i sees keys j < i + offset + 1
        long stateDoubles = (long)h.Map.PaddedCount * h.Columns;
        int blocks = (nk + Block - 1) / Block;

        // Queries that see no key have zero output and zero gradient.
        int blind = (int)Math.Clamp(-offset, 0, nq);
        for (int g = 0; g < h.Group; g++)
        {
            new Span<float>(gradients.QueryGradient + ((h.FirstHead + g) * nq * d), blind * d).Clear();
        }

        using var states = new DoubleBuffer(stateDoubles * blocks);
        using var running = new DoubleBuffer(stateDoubles);
        using var held = new DoubleBuffer(stateDoubles);
        long directDoubles = (long)Block * (d + dv);
        using var direct = new DoubleBuffer(directDoubles * blocks);
        Partials(h, 0, blocks, Block, states.Pointer, stateDoubles, scratch);
        ToWeightedSums(h, states.Pointer, blocks, stateDoubles, running.Pointer, held.Pointer, reverse: false);

        ParallelWork.Run(blocks, h.MaxDegree, backward, (c, s) =>
        {
            double* slot = states.Pointer + (c * stateDoubles), directKey = direct.Pointer + (c * directDoubles);
            new Span<double>(s.StateGradient, (int)stateDoubles).Clear();
            new Span<double>(s.KeyEmbeddingGradient, (int)s.DiagonalDoubles).Clear();
            new Span<double>(directKey, (int)directDoubles).Clear();
            h.NormaliserColumn(slot, s.NormaliserState);
            long first = Math.Max(((long)c * Block) - offset, 0), last = Math.Min((((long)c + 1) * Block) - offset - 1, nq - 1);
            if (first <= last)
            {
                for (int g = 0; g < h.Group; g++)
                {
                    h.QueryBackward(gradients, h.FirstHead + g, (int)first, (int)(last - first + 1), slot, s.NormaliserState, c, s, s.StateGradient);
                }
            }

            h.DiagonalKeys(c, s, directKey);
            new Span<double>(s.DirectValue, Block * dv).CopyTo(new Span<double>(directKey + ((long)Block * d), Block * dv));
            new Span<double>(s.StateGradient, (int)stateDoubles).CopyTo(new Span<double>(slot, (int)stateDoubles));
        });

        ToWeightedSums(h, states.Pointer, blocks, stateDoubles, running.Pointer, held.Pointer, reverse: true);
        ParallelWork.Run(blocks, h.MaxDegree, backward, (b, s) =>
        {
            double* directKey = direct.Pointer + (b * directDoubles);
            h.KeyBackward(gradients, b * Block, Math.Min(Block, nk - (b * Block)), states.Pointer + (b * stateDoubles), directKey, directKey + ((long)Block * d), s);
        });
    }

    /// <summary>Slot c becomes W o (the sum of the slots before it), or after it when <paramref name="reverse"/>: exclusive prefix or suffix sums, in order.</summary>
    private static void ToWeightedSums(Head h, double* slots, int blocks, long stateDoubles, double* running, double* held, bool reverse)
    {
        int n = (int)stateDoubles;
        new Span<double>(running, n).Clear();
        for (int step = 0; step < blocks; step++)
        {
            double* slot = slots + ((reverse ? blocks - 1 - step : step) * stateDoubles);
            new Span<double>(slot, n).CopyTo(new Span<double>(held, n));
            new Span<double>(running, n).CopyTo(new Span<double>(slot, n));
            h.ApplyWeight(slot);
            Add(running, held, stateDoubles);
        }
    }
}
