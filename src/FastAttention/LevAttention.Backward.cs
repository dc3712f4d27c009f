namespace FastAttention;

/// <summary>The backward pass of <see cref="LevAttention"/>: exact (or power) attention's backward on the kept keys.</summary>
public static partial class LevAttention
{
    /// <summary>
    /// The gradients of LevAttention with the selection held fixed: per (batch, kv head) with kept keys U, the backward of
    /// softmax attention (power 0, <see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>) or power attention (power p &gt; 0,
    /// <see cref="PowerAttention.Backward"/>) over <c>K_U</c>, <c>V_U</c>, with <paramref name="output"/> and
    /// <paramref name="logSumExp"/> from the forward that returned <paramref name="selections"/>
    /// (<see cref="Compute(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, LevAttentionOptions)"/>).
    /// The key and value gradients are scattered back to full size and are exactly zero outside U. The selection is a
    /// discrete choice (leverage scores or sensitivity bounds compared with a threshold or ranked): it carries no gradient,
    /// and the keys' influence on which keys are kept is not part of the result. Grouped-query heads add their key and value
    /// gradients, as the kernels do. The bits do not depend on the thread count.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, as passed to the forward.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dL/dO, <c>[batch, heads, nq, dv]</c>; must be finite.</param>
    /// <param name="logSumExp">The forward's log-sum-exp per row, <c>[batch, heads, nq]</c>.</param>
    /// <param name="selections">The forward's selections: one per (batch, kv head), in that order, each with sorted distinct keys in [0, nk).</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dL/dQ, <c>[batch, heads, nq, d]</c>; overwritten.</param>
    /// <param name="keyGradient">dL/dK, <c>[batch, kvHeads, nk, d]</c>; overwritten, zero outside the kept keys.</param>
    /// <param name="valueGradient">dL/dV, <c>[batch, kvHeads, nk, dv]</c>; overwritten, zero outside the kept keys.</param>
    /// <param name="options">The forward's options (power, scale and threads are used; eps or top must still be valid).</param>
    /// <exception cref="ArgumentException">A shape, length, overlap, option or selection that does not match, or a non-finite
    /// input or output gradient (checked before any work); the message names the parameter.</exception>
    public static void Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, IReadOnlyList<LevSelection> selections, AttentionShape shape,
        Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, LevAttentionOptions options)
    {
        Validate.Backward(query, key, value, output, outputGradient, logSumExp, shape, queryGradient, keyGradient, valueGradient);
        CheckOptions(options);
        CheckSelections(selections, shape);
        FiniteCheck.Require(query, nameof(query), shape.HeadDim, "LevAttention needs finite queries.");
        FiniteCheck.Require(key, nameof(key), shape.HeadDim, "LevAttention needs finite keys.");
        FiniteCheck.Require(value, nameof(value), shape.ValueDim, "LevAttention needs finite values.");
        FiniteCheck.Require(outputGradient, nameof(outputGradient), shape.ValueDim, "The backward needs a finite output gradient.");

        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount, nq = shape.QueryCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        keyGradient.Clear();
        valueGradient.Clear();
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < kvHeads; hk++)
            {
                long kv = ((long)b * kvHeads) + hk, firstHead = ((long)b * shape.HeadCount) + (hk * group);
                int[] kept = selections[(int)kv].Keys;
                Span<float> dq = queryGradient.Slice((int)(firstHead * nq * d), group * nq * d);
                if (kept.Length == 0)
                {
                    dq.Clear(); // the rows attended to nothing and output zeros: no gradient reaches anything
                    continue;
                }

                // The kept keys and values, gathered as the forward attended over them: [|U|, d] and [|U|, dv].
                float[] ks = Gather(key.Slice((int)(kv * nk * d), nk * d), kept, d), vs = Gather(value.Slice((int)(kv * nk * dv), nk * dv), kept, dv);
                float[] dks = new float[ks.Length], dvs = new float[vs.Length];
                var sub = new AttentionShape(1, group, nq, kept.Length, d, dv, KeyValueHeadCount: 1);
                ReadOnlySpan<float> q = query.Slice((int)(firstHead * nq * d), group * nq * d);
                ReadOnlySpan<float> o = output.Slice((int)(firstHead * nq * dv), group * nq * dv);
                ReadOnlySpan<float> dO = outputGradient.Slice((int)(firstHead * nq * dv), group * nq * dv);
                ReadOnlySpan<float> lse = logSumExp.Slice((int)(firstHead * nq), group * nq);
                if (options.Power > 0)
                {
                    PowerAttention.Backward(q, ks, vs, o, dO, lse, sub, dq, dks, dvs, PowerOptions(options));
                }
                else
                {
                    ExactAttention.Backward(q, ks, vs, o, dO, lse, sub, dq, dks, dvs, ExactOptions(options));
                }

                Scatter(dks, kept, keyGradient.Slice((int)(kv * nk * d), nk * d), d);
                Scatter(dvs, kept, valueGradient.Slice((int)(kv * nk * dv), nk * dv), dv);
            }
        }
    }

    /// <summary>rows[indices[x]] = gathered[x] (the inverse of <see cref="Gather"/>; the other rows are left as they are).</summary>
    internal static void Scatter(ReadOnlySpan<float> gathered, int[] indices, Span<float> rows, int width)
    {
        for (int x = 0; x < indices.Length; x++)
        {
            gathered.Slice(x * width, width).CopyTo(rows.Slice(indices[x] * width, width));
        }
    }

    /// <summary>One selection per (batch, kv head) in that order, each with sorted distinct keys in [0, nk).</summary>
    private static void CheckSelections(IReadOnlyList<LevSelection> selections, AttentionShape shape)
    {
        ArgumentNullException.ThrowIfNull(selections);
        int kvHeads = shape.EffectiveKeyValueHeads, nk = shape.KeyCount;
        const string Hint = "pass the selections the forward returned for the same shape";
        if (selections.Count != (long)shape.BatchSize * kvHeads)
        {
            Validate.Fail(nameof(selections), "one selection per (batch, kv head) is needed", $"{selections.Count} selections", $"{(long)shape.BatchSize * kvHeads} = batch x kvHeads for ({shape})", Hint);
        }

        for (int x = 0; x < selections.Count; x++)
        {
            LevSelection s = selections[x] ?? throw new ArgumentNullException(nameof(selections), $"Selection {x} is null.");
            int b = x / kvHeads, hk = x % kvHeads;
            if (s.Batch != b || s.KvHead != hk)
            {
                Validate.Fail(nameof(selections), $"selection {x} belongs to another head", $"batch {s.Batch}, kv head {s.KvHead}", $"batch {b}, kv head {hk}", Hint);
            }

            int[] keys = s.Keys;
            if (keys is null)
            {
                Validate.Fail(nameof(selections), $"selection {x} has no key list", "null keys", "sorted distinct keys in [0, nk)", Hint);
            }

            for (int y = 0; y < keys.Length; y++)
            {
                if (keys[y] < 0 || keys[y] >= nk || (y > 0 && keys[y] <= keys[y - 1]))
                {
                    Validate.Fail(nameof(selections), $"selection {x} holds key {keys[y]} at position {y}", $"keys [{string.Join(", ", keys.Take(8))}{(keys.Length > 8 ? ", ..." : "")}]",
                        $"sorted distinct keys in [0, {nk})", Hint);
                }
            }
        }
    }
}
