using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace FastAttention.Kernels;

/// <summary>
/// Exact attention for decoding: a few queries against many keys. There is too little query work to
/// tile, and the kernel is bound by reading K and V, so it reads them once, in place (no packing), and
/// splits the keys into fixed chunks that run in parallel:
/// <list type="number">
/// <item>per (batch, kv head, key chunk), for each query of each query head sharing that kv head: scores (in base 2: times
/// log2 e), chunk max <c>m_c</c>, <c>p = 2^(s - m_c)</c>, <c>l_c = sum p</c>, <c>o_c = sum p v</c>;</item>
/// <item>per (batch, head) and query, merge in chunk order: <c>m = max m_c</c>,
/// <c>l = sum l_c 2^(m_c - m)</c>, <c>out = sum o_c 2^(m_c - m) / l</c>.</item>
/// </list>
/// The chunk size depends on the shape only, not on the thread count, and the merge order is fixed, so the
/// output bits are the same for every thread count.
/// </summary>
internal static unsafe class SplitKeyAttention<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>The most queries per head this kernel takes; more is the tiled kernels' work.</summary>
    public const int MaxQueries = 16;

    /// <summary>Keys per chunk for one query row per kv head (the chunk is read once).</summary>
    private const int KeyChunk = 1024;

    /// <summary>K and V bytes per chunk when several query rows share a kv head (128, 256 and 512 KiB measured: 256 KiB).</summary>
    private const int SharedChunkBytes = 256 << 10;

    /// <summary>How far ahead of the scores' reads of K the cache lines are prefetched, in bytes (2, 4 and 8 KiB measured at
    /// d = 64 and 128: 4 KiB as fast as the best at both).</summary>
    private const int PrefetchDistance = 4096;

    public static string? Rejects(in AttentionArgs a) =>
        a.QueryCount > MaxQueries ? $"{a.QueryCount} queries per head; the split-key decoding kernel takes at most {MaxQueries}" : null;

    public static void Run(AttentionArgs a)
    {
        // Several query rows per kv head (grouped-query heads, or several queries) read each chunk once per row: smaller
        // chunks keep K and V in L2 for the rows after the first.
        int keyChunk = a.GroupSize * a.QueryCount > 1
            ? Math.Clamp(SharedChunkBytes / ((a.HeadDim + a.ValueDim) * sizeof(float)) / 16 * 16, 64, KeyChunk)
            : KeyChunk;
        int chunks = (a.KeyCount + keyChunk - 1) / keyChunk;
        int heads = a.Batch * a.Heads;
        int partialSize = a.ValueDim + 2; // [max, sum, o...]
        long perHead = (long)chunks * a.QueryCount * partialSize;
        using NativeBufferPool.Buffer partialBuffer = NativeBufferPool.Rent(heads * perHead);
        float* partials = partialBuffer.Pointer;
        var options = new ParallelOptions { MaxDegreeOfParallelism = a.MaxDegreeOfParallelism > 0 ? a.MaxDegreeOfParallelism : -1 };

        // Pass 1: every (batch, kv head, chunk) independently, for all the query heads that share the kv head (grouped-query
        // attention): their reads of the chunk after the first hit the cache instead of memory.
        int kvGroups = a.Batch * a.KvHeads;
        Parallel.For(0, kvGroups * chunks, options, item =>
        {
            int g = item / chunks, c = item % chunks;
            float* scores = stackalloc float[KeyChunk + 16];
            Chunk(in a, g / a.KvHeads, g % a.KvHeads, c * keyChunk, Math.Min(keyChunk, a.KeyCount - (c * keyChunk)), scores,
                partials + ((long)c * a.QueryCount * partialSize), perHead);
        });

        // Pass 2: merge the chunks of each (batch, head) in order.
        Parallel.For(0, heads, options, bh => Merge(in a, chunks, partials + (bh * perHead), bh));
    }

    /// <summary>
    /// Keys j0 .. j0 + count of kv head <paramref name="kvHead"/> of batch <paramref name="b"/> against every query of the
    /// query heads that share it; query head bh's partials start at <paramref name="partials"/> + bh <paramref name="perHead"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Chunk(in AttentionArgs a, int b, int kvHead, int j0, int count, float* s, float* partials, long perHead)
    {
        int d = a.HeadDim, dv = a.ValueDim, w = TS.Count;
        long kv = ((long)b * a.KvHeads) + kvHead;
        float* keys = a.Key + (((kv * a.KeyCount) + j0) * d);
        float* values = a.Value + (((kv * a.KeyCount) + j0) * dv);
        long causalOffset = (long)a.KeyCount - a.QueryCount;

        // Finiteness of this chunk of K and V is read off the results instead of a second pass over them: a NaN or
        // infinite element makes the dot products of its key (0 * inf is NaN too) or the weighted sum of its value
        // (p is finite) non-finite. Only what the results do not clear is scanned, and the scan finds the index:
        // a chunk with a non-finite result (finite inputs that overflow also give one), keys past every query's
        // causal limit, values no query weighted.
        bool suspect = false, valuesWeighted = false;
        int keysDotted = 0;
        for (int row = 0; row < a.GroupSize * a.QueryCount; row++)
        {
            int h = (kvHead * a.GroupSize) + (row / a.QueryCount), i = row % a.QueryCount;
            long bh = ((long)b * a.Heads) + h;
            float* q = a.Query + (((bh * a.QueryCount) + i) * d);
            float* result = partials + (bh * perHead) + ((long)i * (dv + 2));
            int visible = a.Causal ? (int)Math.Clamp(i + causalOffset + 1 - j0, 0, count) : count;

            Scores(q, keys, d, visible, s);
            suspect |= !FiniteCheck.AllFinite(new ReadOnlySpan<float>(s, visible));
            keysDotted = Math.Max(keysDotted, visible);

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

            WeightedSum(s, values, count, dv, o);
            suspect |= !FiniteCheck.AllFinite(new ReadOnlySpan<float>(o, dv));
            valuesWeighted = true;
            result[1] = sum;
        }

        // Non-finite inputs: scan what the results did not clear.
        if (a.FirstNonFinite != null)
        {
            int keysFrom = suspect ? 0 : keysDotted;
            ReportNonFinite(new ReadOnlySpan<float>(keys + ((long)keysFrom * d), (count - keysFrom) * d), ((kv * a.KeyCount) + j0 + keysFrom) * d, a.FirstNonFinite);
            if (suspect || !valuesWeighted)
            {
                ReportNonFinite(new ReadOnlySpan<float>(values, count * dv), ((kv * a.KeyCount) + j0) * dv, a.FirstNonFinite + 1);
            }
        }
    }

    /// <summary>s_j = q . k_j for the first <paramref name="visible"/> keys of the chunk, four keys at a time so four independent FMA chains overlap.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Scores(float* q, float* keys, int d, int visible, float* s)
    {
        // A method of its own (as is WeightedSum): inside Chunk, the JIT spilled these loops' pointers to the stack.
        // Each block of four keys is read one vector of each row at a time, which the hardware prefetchers follow
        // poorly: the lines PrefetchDistance bytes ahead are requested explicitly (1.3-1.4x at d = 64 and 128).
        int j = 0;
        int blockBytes = 4 * d * sizeof(float);
        for (; j + 4 <= visible; j += 4)
        {
            float* block = keys + ((long)j * d);
            if (Sse.IsSupported)
            {
                byte* ahead = (byte*)block + PrefetchDistance;
                for (int offset = 0; offset < blockBytes; offset += 64)
                {
                    Sse.Prefetch0(ahead + offset); // a hint: never faults, even past the end of K
                }
            }

            Dot4(q, block, d, s + j);
        }

        for (; j < visible; j++)
        {
            s[j] = Dot(q, keys + ((long)j * d), d);
        }
    }

    /// <summary>
    /// o = sum_j p_j v_j over the chunk's keys, with blocks of eight, four, two or one vectors of o held in registers across
    /// all keys (dv = 64 or 128 with 512-bit vectors is one pass over V); each element is summed in key order, one FMA per key.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum(float* p, float* values, int count, int dv, float* o)
    {
        int w = TS.Count, c = 0;
        for (; c + (8 * w) <= dv; c += 8 * w)
        {
            TV z = TS.Broadcast(0f), o0 = z, o1 = z, o2 = z, o3 = z, o4 = z, o5 = z, o6 = z, o7 = z;
            float* v = values + c;
            for (int j = 0; j < count; j++, v += dv)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, TS.Load(ref v[0]), o0);
                o1 = TS.MultiplyAdd(pj, TS.Load(ref v[w]), o1);
                o2 = TS.MultiplyAdd(pj, TS.Load(ref v[2 * w]), o2);
                o3 = TS.MultiplyAdd(pj, TS.Load(ref v[3 * w]), o3);
                o4 = TS.MultiplyAdd(pj, TS.Load(ref v[4 * w]), o4);
                o5 = TS.MultiplyAdd(pj, TS.Load(ref v[5 * w]), o5);
                o6 = TS.MultiplyAdd(pj, TS.Load(ref v[6 * w]), o6);
                o7 = TS.MultiplyAdd(pj, TS.Load(ref v[7 * w]), o7);
            }

            TS.Store(o0, ref o[c]);
            TS.Store(o1, ref o[c + w]);
            TS.Store(o2, ref o[c + (2 * w)]);
            TS.Store(o3, ref o[c + (3 * w)]);
            TS.Store(o4, ref o[c + (4 * w)]);
            TS.Store(o5, ref o[c + (5 * w)]);
            TS.Store(o6, ref o[c + (6 * w)]);
            TS.Store(o7, ref o[c + (7 * w)]);
        }

        for (; c + (4 * w) <= dv; c += 4 * w)
        {
            TV o0 = TS.Broadcast(0f), o1 = o0, o2 = o0, o3 = o0;
            float* v = values + c;
            for (int j = 0; j < count; j++, v += dv)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, TS.Load(ref v[0]), o0);
                o1 = TS.MultiplyAdd(pj, TS.Load(ref v[w]), o1);
                o2 = TS.MultiplyAdd(pj, TS.Load(ref v[2 * w]), o2);
                o3 = TS.MultiplyAdd(pj, TS.Load(ref v[3 * w]), o3);
            }

            TS.Store(o0, ref o[c]);
            TS.Store(o1, ref o[c + w]);
            TS.Store(o2, ref o[c + (2 * w)]);
            TS.Store(o3, ref o[c + (3 * w)]);
        }

        for (; c + (2 * w) <= dv; c += 2 * w)
        {
            TV o0 = TS.Broadcast(0f), o1 = o0;
            float* v = values + c;
            for (int j = 0; j < count; j++, v += dv)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, TS.Load(ref v[0]), o0);
                o1 = TS.MultiplyAdd(pj, TS.Load(ref v[w]), o1);
            }

            TS.Store(o0, ref o[c]);
            TS.Store(o1, ref o[c + w]);
        }

        for (; c + w <= dv; c += w)
        {
            TV o0 = TS.Broadcast(0f);
            float* v = values + c;
            for (int j = 0; j < count; j++, v += dv)
            {
                o0 = TS.MultiplyAdd(TS.Broadcast(p[j]), TS.Load(ref v[0]), o0);
            }

            TS.Store(o0, ref o[c]);
        }

        for (; c < dv; c++)
        {
            float total = 0f;
            for (int j = 0; j < count; j++)
            {
                total = MathF.FusedMultiplyAdd(p[j], values[((long)j * dv) + c], total);
            }

            o[c] = total;
        }
    }

    private static void ReportNonFinite(ReadOnlySpan<float> chunk, long offset, long* first)
    {
        int bad = FiniteCheck.FirstNonFinite(chunk);
        if (bad < 0)
        {
            return;
        }

        long at = offset + bad;

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

    /// <summary>
    /// Pass 2 for one (batch, head): each query's chunk partials folded in chunk order by <see cref="AttentionPartial.Merge{TBase}"/>
    /// (base 2, as the scores), then normalised; the statistics go to <see cref="AttentionArgs.RowStats"/> when asked.
    /// </summary>
    private static void Merge(in AttentionArgs a, int chunks, float* partials, int bh)
    {
        int dv = a.ValueDim;
        int stride = a.QueryCount * (dv + 2);
        for (int i = 0; i < a.QueryCount; i++)
        {
            long r = ((long)bh * a.QueryCount) + i;
            var row = new Span<float>(a.Output + (r * dv), dv);
            row.Clear();
            AttentionPartial merged = AttentionPartial.Empty;
            for (int c = 0; c < chunks; c++)
            {
                float* part = partials + ((long)c * stride) + (i * (dv + 2));
                merged = AttentionPartial.Merge<BinaryBase>(merged, row, new AttentionPartial(part[0], part[1]), new ReadOnlySpan<float>(part + 2, dv), row);
            }

            AttentionPartial.Normalize(merged, row, row); // no visible key: zeros; a NaN statistic propagates
            if (a.RowStats != null)
            {
                a.RowStats[2 * r] = merged.Max;
                a.RowStats[(2 * r) + 1] = merged.Sum;
            }
        }
    }
}
