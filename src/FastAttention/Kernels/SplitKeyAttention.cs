using System.Runtime.CompilerServices;

namespace FastAttention.Kernels;

/// <summary>
/// Exact attention for decoding: a few queries against many keys. There is too little query work to
/// tile, and the kernel is bound by reading K and V, so it reads them once, in place (no packing), and
/// splits the keys into fixed chunks that run in parallel:
/// <list type="number">
/// <item>per (batch, head, key chunk) and query: scores (in base 2: times log2 e), chunk max <c>m_c</c>, <c>p = 2^(s - m_c)</c>,
/// <c>l_c = sum p</c>, <c>o_c = sum p v</c>;</item>
/// <item>per (batch, head) and query, merge in chunk order: <c>m = max m_c</c>,
/// <c>l = sum l_c 2^(m_c - m)</c>, <c>out = sum o_c 2^(m_c - m) / l</c>.</item>
/// </list>
/// The chunk size is fixed, not derived from the thread count, and the merge order is fixed, so the
/// output bits are the same for every thread count.
/// </summary>
internal static unsafe class SplitKeyAttention<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>The most queries per head this kernel takes; more is the tiled kernels' work.</summary>
    public const int MaxQueries = 16;

    /// <summary>Keys per chunk: a chunk of K and V (1024 x d floats each) stays in L2 while each query uses it.</summary>
    private const int KeyChunk = 1024;

    public static string? Rejects(in AttentionArgs a) =>
        a.QueryCount > MaxQueries ? $"{a.QueryCount} queries per head; the split-key decoding kernel takes at most {MaxQueries}"
        : a.RowStats != null ? "it does not export row statistics (tensor attention uses the tiled kernels)" : null;

    public static void Run(AttentionArgs a)
    {
        int chunks = (a.KeyCount + KeyChunk - 1) / KeyChunk;
        int heads = a.Batch * a.Heads;
        int partialSize = a.ValueDim + 2; // [max, sum, o...]
        long perHead = (long)chunks * a.QueryCount * partialSize;
        using NativeBufferPool.Buffer partialBuffer = NativeBufferPool.Rent(heads * perHead);
        float* partials = partialBuffer.Pointer;
        var options = new ParallelOptions { MaxDegreeOfParallelism = a.MaxDegreeOfParallelism > 0 ? a.MaxDegreeOfParallelism : -1 };

        // Pass 1: every (batch, head, chunk) independently.
        Parallel.For(0, heads * chunks, options, item =>
        {
            int bh = item / chunks, c = item % chunks;
            float* scores = stackalloc float[KeyChunk + 16];
            Chunk(in a, bh, c * KeyChunk, Math.Min(KeyChunk, a.KeyCount - (c * KeyChunk)), scores,
                partials + (bh * perHead) + ((long)c * a.QueryCount * partialSize));
        });

        // Pass 2: merge the chunks of each (batch, head) in order.
        Parallel.For(0, heads, options, bh => Merge(in a, chunks, partials + (bh * perHead), a.Output + ((long)bh * a.QueryCount * a.ValueDim)));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Chunk(in AttentionArgs a, int bh, int j0, int count, float* s, float* partial)
    {
        int d = a.HeadDim, dv = a.ValueDim, w = TS.Count;
        int b = bh / a.Heads, h = bh % a.Heads;
        long kv = ((long)b * a.KvHeads) + (h / a.GroupSize);
        float* keys = a.Key + (((kv * a.KeyCount) + j0) * d);
        float* values = a.Value + (((kv * a.KeyCount) + j0) * dv);
        long causalOffset = (long)a.KeyCount - a.QueryCount;
        for (int i = 0; i < a.QueryCount; i++)
        {
            float* q = a.Query + ((((long)bh * a.QueryCount) + i) * d);
            float* result = partial + ((long)i * (dv + 2));
            int visible = a.Causal ? (int)Math.Clamp(i + causalOffset + 1 - j0, 0, count) : count;

            // Scores s_j = s q.k_j, four keys at a time so four independent FMA chains overlap.
            int j4 = 0;
            for (; j4 + 4 <= visible; j4 += 4)
            {
                Dot4(q, keys + ((long)j4 * d), d, s + j4);
            }

            for (int j = j4; j < visible; j++)
            {
                s[j] = Dot(q, keys + ((long)j * d), d);
            }

            float max = float.NegativeInfinity;
            if (a.Power == 0f && a.Bias == null && a.Mask == null)
            {
                // Plain scores (the decoding case): scale (times log2 e: the softmax works in base 2), hide the keys past the causal limit and take
                // the max with vectors; NaN scores still reach the max below through the scalar check.
                System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(s, visible), a.Scale * VectorMath.Log2E, new Span<float>(s, visible));
                new Span<float>(s + visible, count - visible).Fill(float.NegativeInfinity);
                max = System.Numerics.Tensors.TensorPrimitives.Max(new ReadOnlySpan<float>(s, count));
            }
            else
            {
                for (int j = 0; j < count; j++)
                {
                    float score = j < visible ? a.Scale * VectorMath.Log2E * s[j] : float.NegativeInfinity; // base 2, as above
                    long at = ((long)i * a.KeyCount) + j0 + j;
                    if (a.Power > 0f && j < visible)
                    {
                        score = a.PowerScore(a.Scale * s[j]) * VectorMath.Log2E;
                    }

                    if (a.Bias != null)
                    {
                        score = MathF.FusedMultiplyAdd(a.Bias[(b * a.BiasBatchStride) + (h * a.BiasHeadStride) + at], VectorMath.Log2E, score);
                    }

                    if (a.Mask != null && !a.Mask[(b * a.MaskBatchStride) + (h * a.MaskHeadStride) + at])
                    {
                        score = float.NegativeInfinity;
                    }

                    s[j] = score;
                    max = float.IsNaN(score) ? score : MathF.Max(max, score);
                }
            }

            float* o = result + 2;
            new Span<float>(o, dv).Clear();
            result[0] = max;
            if (float.IsNegativeInfinity(max))
            {
                result[1] = 0f; // nothing visible in this chunk
                continue;
            }

            // p_j = 2^(s_j - m_c), vectorised over the chunk (scores padded with -inf to whole vectors).
            int padded = (count + w - 1) / w * w;
            for (int j = count; j < padded; j++)
            {
                s[j] = float.NegativeInfinity;
            }

            TV shift = TS.Broadcast(max);
            TV total = TS.Broadcast(0f);
            for (int j = 0; j < padded; j += w)
            {
                TV p = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Load(ref s[j]), shift));
                TS.Store(p, ref s[j]);
                total = TS.Add(total, p);
            }

            float sum = TS.SumAcross(total);

            // o_c = sum p_j v_j, vectorised over the value dimension.
            for (int j = 0; j < count; j++)
            {
                float p = s[j];
                float* v = values + ((long)j * dv);
                TV pv = TS.Broadcast(p);
                int c = 0;
                for (; c + w <= dv; c += w)
                {
                    TS.Store(TS.MultiplyAdd(pv, TS.Load(ref v[c]), TS.Load(ref o[c])), ref o[c]);
                }

                for (; c < dv; c++)
                {
                    o[c] = MathF.FusedMultiplyAdd(p, v[c], o[c]);
                }
            }

            result[1] = sum;
        }

        // Non-finite inputs: check this chunk of K and V now that it is in cache, once per kv head.
        if (a.FirstNonFinite != null && h % a.GroupSize == 0)
        {
            ReportNonFinite(new ReadOnlySpan<float>(keys, count * d), (((kv * a.KeyCount) + j0) * d), a.FirstNonFinite);
            ReportNonFinite(new ReadOnlySpan<float>(values, count * dv), (((kv * a.KeyCount) + j0) * dv), a.FirstNonFinite + 1);
        }
    }

    private static void ReportNonFinite(ReadOnlySpan<float> chunk, long offset, long* first)
    {
        if (System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(chunk))
        {
            return;
        }

        long at = offset;
        foreach (float x in chunk)
        {
            if (!float.IsFinite(x))
            {
                break;
            }

            at++;
        }

        // Lower *first to at (several chunks may race).
        long seen = Volatile.Read(ref *first);
        while (at < seen)
        {
            long previous = Interlocked.CompareExchange(ref *first, at, seen);
            if (previous == seen)
            {
                break;
            }

            seen = previous;
        }
    }

    /// <summary>s[0..4] = x . y_r for the four consecutive rows y_r of length d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* x, float* y, int d, float* s)
    {
        int w = TS.Count;
        TV a0 = TS.Broadcast(0f), a1 = a0, a2 = a0, a3 = a0;
        float* y1 = y + d, y2 = y1 + d, y3 = y2 + d;
        int t = 0;
        for (; t + w <= d; t += w)
        {
            TV xv = TS.Load(ref x[t]);
            a0 = TS.MultiplyAdd(xv, TS.Load(ref y[t]), a0);
            a1 = TS.MultiplyAdd(xv, TS.Load(ref y1[t]), a1);
            a2 = TS.MultiplyAdd(xv, TS.Load(ref y2[t]), a2);
            a3 = TS.MultiplyAdd(xv, TS.Load(ref y3[t]), a3);
        }

        float s0 = TS.SumAcross(a0), s1 = TS.SumAcross(a1), s2 = TS.SumAcross(a2), s3 = TS.SumAcross(a3);
        for (; t < d; t++)
        {
            s0 = MathF.FusedMultiplyAdd(x[t], y[t], s0);
            s1 = MathF.FusedMultiplyAdd(x[t], y1[t], s1);
            s2 = MathF.FusedMultiplyAdd(x[t], y2[t], s2);
            s3 = MathF.FusedMultiplyAdd(x[t], y3[t], s3);
        }

        s[0] = s0;
        s[1] = s1;
        s[2] = s2;
        s[3] = s3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* x, float* y, int d)
    {
        int w = TS.Count;
        TV acc = TS.Broadcast(0f);
        int t = 0;
        for (; t + w <= d; t += w)
        {
            acc = TS.MultiplyAdd(TS.Load(ref x[t]), TS.Load(ref y[t]), acc);
        }

        float total = TS.SumAcross(acc);
        for (; t < d; t++)
        {
            total = MathF.FusedMultiplyAdd(x[t], y[t], total);
        }

        return total;
    }

    private static void Merge(in AttentionArgs a, int chunks, float* partials, float* output)
    {
        int dv = a.ValueDim;
        int stride = a.QueryCount * (dv + 2);
        for (int i = 0; i < a.QueryCount; i++)
        {
            float* row = output + ((long)i * dv);
            float max = float.NegativeInfinity;
            bool nan = false;
            for (int c = 0; c < chunks; c++)
            {
                float m = partials[((long)c * stride) + (i * (dv + 2))];
                nan |= float.IsNaN(m);
                max = MathF.Max(max, m);
            }

            new Span<float>(row, dv).Clear();
            if (nan)
            {
                new Span<float>(row, dv).Fill(float.NaN);
                continue;
            }

            if (float.IsNegativeInfinity(max))
            {
                continue; // no visible key: zeros
            }

            float sum = 0f;
            for (int c = 0; c < chunks; c++)
            {
                float* part = partials + ((long)c * stride) + (i * (dv + 2));
                if (part[1] == 0f)
                {
                    continue;
                }

                float scale = VectorMath.Exp2NonPositive<SimdScalar, float>(part[0] - max);
                sum = MathF.FusedMultiplyAdd(part[1], scale, sum);
                for (int k = 0; k < dv; k++)
                {
                    row[k] = MathF.FusedMultiplyAdd(part[2 + k], scale, row[k]);
                }
            }

            for (int k = 0; k < dv; k++)
            {
                row[k] = sum != 0f ? row[k] / sum : 0f;
            }
        }
    }
}
