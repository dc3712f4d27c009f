using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FastAttention.Kernels;

/// <summary>
/// Exact attention for decoding: a few queries against many keys. There is too little query work to
/// tile, and the kernel is bound by reading K and V, so it reads them once, in place (no packing), in the type they are
/// stored in (<typeparamref name="TE"/>: float32, float16, bfloat16 or q8, widened exactly in registers; contiguous or in
/// pages), and splits the keys into fixed chunks that run in parallel:
/// <list type="number">
/// <item>per (batch, kv head, key chunk), for the query rows of every query head sharing that kv head, four rows at a time
/// (each key and value vector is loaded and widened once for the four): scores (in base 2: times log2 e), chunk max
/// <c>m_c</c>, <c>p = 2^(s - m_c)</c>, <c>l_c = sum p</c>, <c>o_c = sum p v</c>;</item>
/// <item>per (batch, head) and query, merge in chunk order: <c>m = max m_c</c>,
/// <c>l = sum l_c 2^(m_c - m)</c>, <c>out = sum o_c 2^(m_c - m) / l</c>.</item>
/// </list>
/// A sliding window with sinks (<see cref="AttentionArgs.Window"/>) skips the chunks no query sees and masks the rest; with
/// the finiteness check on (<see cref="AttentionArgs.FirstNonFinite"/>) the skipped chunks are still scanned, so only a caller
/// that lets non-finite values through is spared reading them.
/// The chunk size depends on the shape only, not on the thread count, and the merge order is fixed, so the
/// output bits are the same for every thread count; every score and output element is summed in the same order whether its
/// row runs alone or in a block of four, except for q8 with 512-bit vectors, whose rows alone fold each block's scale in once
/// (<see cref="ScoresQ8"/>, <see cref="WeightedSumQ8"/>).
/// </summary>
/// <remarks>Locals are not zeroed: the scores and widened scales on the stack are written before they are read.</remarks>
[SkipLocalsInit]
internal static unsafe class SplitKeyAttention<TS, TV, TE>
    where TS : struct, ISimd<TV>
    where TV : struct
    where TE : struct, IKvElement
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

    /// <summary>The most widened q8 scales of a chunk kept on the stack (32 KiB: d + dv up to 256 at 1024 keys a chunk).</summary>
    private const int MaxStackScales = 8192;

    /// <summary>Query rows that share each load of a key or value vector.</summary>
    private const int RowBlock = 4;

    /// <summary>Floats per row of scores: a chunk plus a vector of padding.</summary>
    private const int ScoreStride = KeyChunk + 16;

    public static string? Rejects(in AttentionArgs a)
    {
        if (a.QueryCount > MaxQueries)
        {
            return $"{a.QueryCount} queries per head; the split-key decoding kernel takes at most {MaxQueries}";
        }

        KvOperand keys = a.Keys, values = a.Values;
        if (KernelRegistry.StorageMismatch(in a, TE.Type) is string mismatch)
        {
            return mismatch;
        }

        if (keys.IsPaged != values.IsPaged || keys.PageRows != values.PageRows)
        {
            return $"keys in pages of {keys.PageRows} rows, values in pages of {values.PageRows} (0: contiguous); this kernel takes one layout for both";
        }

        return keys.IsPaged && (keys.PageRows < 16 || !BitOperations.IsPow2(keys.PageRows))
            ? $"pages of {keys.PageRows} rows; this kernel takes a power of two of at least 16"
            : null;
    }

    public static void Run(AttentionArgs a)
    {
        // Up to four rows per kv head share each read of a chunk; more rows (grouped-query heads times several queries) read it
        // again per block of four: smaller chunks keep K and V in L2 for the blocks after the first.
        int elementBytes = KvElementTypes.SizeOf(TE.Type);
        int keyChunk = a.GroupSize * a.QueryCount > 1
            ? Math.Clamp(SharedChunkBytes / ((a.HeadDim + a.ValueDim) * elementBytes) / 16 * 16, 64, KeyChunk)
            : KeyChunk;
        if (a.Keys.IsPaged)
        {
            // Chunks of a power of two no longer than a page start on page boundaries, so none crosses one.
            keyChunk = Math.Min((int)BitOperations.RoundUpToPowerOf2((uint)keyChunk + 1) / 2, a.Keys.PageRows);
        }

        int chunks = (a.KeyCount + keyChunk - 1) / keyChunk;
        int heads = a.Batch * a.Heads;
        int partialSize = a.ValueDim + 2; // [max, sum, o...]
        long perHead = (long)chunks * a.QueryCount * partialSize;
        using NativeBufferPool.Buffer partialBuffer = NativeBufferPool.Rent(heads * perHead);
        float* partials = partialBuffer.Pointer;
        var options = new ParallelOptions { MaxDegreeOfParallelism = a.MaxDegreeOfParallelism > 0 ? a.MaxDegreeOfParallelism : -1 };

        // Pass 1: every (batch, kv head, chunk) independently, for all the query heads that share the kv head (grouped-query
        // attention).
        int kvGroups = a.Batch * a.KvHeads;
        Parallel.For(0, kvGroups * chunks, options, item =>
        {
            int g = item / chunks, c = item % chunks;
            float* scores = stackalloc float[RowBlock * ScoreStride];
            Chunk(in a, g / a.KvHeads, g % a.KvHeads, c * keyChunk, Math.Min(keyChunk, a.KeyCount - (c * keyChunk)), scores,
                partials + ((long)c * a.QueryCount * partialSize), perHead);
        });

        // Pass 2: merge the chunks of each (batch, head) in order.
        Parallel.For(0, heads, options, bh => Merge(in a, chunks, partials + (bh * perHead), bh));
    }

    /// <summary>
    /// The keys of chunk [j0, j0 + count) that query <paramref name="i"/> sees, in chunk coordinates: [lo, hi) without
    /// [gapLo, gapHi) (the keys between the sinks and the window). lo = hi when it sees none.
    /// </summary>
    private static void Visible(in AttentionArgs a, int i, int j0, int count, out int lo, out int hi, out int gapLo, out int gapHi)
    {
        long p = (long)i + a.KeyCount - a.QueryCount;
        long end = a.Causal ? p + 1 : a.KeyCount;
        long start = 0, sinkEnd = 0;
        if (a.Window > 0)
        {
            start = Math.Max(0, p - a.Window + 1);
            sinkEnd = Math.Min(a.Sinks, end);
        }

        int windowLo = (int)Math.Clamp(start - j0, 0, count), windowHi = (int)Math.Clamp(end - j0, 0, count);
        int sinkHi = (int)Math.Clamp(sinkEnd - j0, 0, count);
        gapLo = gapHi = 0;
        if (windowLo >= windowHi)
        {
            (lo, hi) = (0, sinkHi);
        }
        else if (sinkHi == 0)
        {
            (lo, hi) = (windowLo, windowHi);
        }
        else
        {
            (lo, hi) = (0, Math.Max(sinkHi, windowHi));
            if (sinkHi < windowLo)
            {
                (gapLo, gapHi) = (sinkHi, windowLo);
            }
        }
    }

    /// <summary>
    /// Keys j0 .. j0 + count of kv head <paramref name="kvHead"/> of batch <paramref name="b"/> against every query of the
    /// query heads that share it; query head bh's partials start at <paramref name="partials"/> + bh <paramref name="perHead"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Chunk(in AttentionArgs a, int b, int kvHead, int j0, int count, float* scores, float* partials, long perHead)
    {
        int d = a.HeadDim, dv = a.ValueDim, w = TS.Count;
        KvOperand keyStore = a.Keys, valueStore = a.Values;
        long kv = ((long)b * a.KvHeads) + kvHead;
        // q8: the chunk's scales widened to floats once, for the loads of every vector and row that use them.
        bool q8 = TE.Type == KvElementType.Q8;
        long scaleCount = q8 ? (long)count * (keyStore.BlocksPerRow + valueStore.BlocksPerRow) : 0;
        bool scalesOnStack = scaleCount <= MaxStackScales;
        float* stackScales = stackalloc float[scalesOnStack ? (int)scaleCount : 0];
        using NativeBufferPool.Buffer? heapScales = scalesOnStack ? null : NativeBufferPool.Rent(scaleCount);
        float* keyScales = heapScales is { } heap ? heap.Pointer : stackScales;
        float* valueScales = keyScales + ((long)count * keyStore.BlocksPerRow);
        if (q8)
        {
            KvWiden.Row(KvElementType.Float16, (byte*)keyStore.RowScales(kv, j0), null, count * keyStore.BlocksPerRow, keyScales);
            KvWiden.Row(KvElementType.Float16, (byte*)valueStore.RowScales(kv, j0), null, count * valueStore.BlocksPerRow, valueScales);
        }

        var keys = new Rows(keyStore, kv, j0, keyScales);
        var values = new Rows(valueStore, kv, j0, valueScales);
        int rows = a.GroupSize * a.QueryCount;

        // The rows of the heads sharing this kv head are consecutive in the query and the partials: row r is query r % nq of head
        // kvHead G + r / nq.
        float* query = a.Query + ((((long)b * a.Heads) + ((long)kvHead * a.GroupSize)) * a.QueryCount * d);

        // The keys some row sees: only these are scored (the same range for every row, masked per row after).
        int scoredLo = count, scoredHi = 0;
        for (int i = 0; i < Math.Min(rows, a.QueryCount); i++)
        {
            Visible(in a, i, j0, count, out int lo, out int hi, out _, out _);
            if (lo < hi)
            {
                scoredLo = Math.Min(scoredLo, lo);
                scoredHi = Math.Max(scoredHi, hi);
            }
        }

        // Finiteness of this chunk of K and V is read off the results instead of a second pass over them: a NaN or
        // infinite element makes the dot products of its key (0 * inf is NaN too) or the weighted sum of its value
        // (p is finite) non-finite. Only what the results do not clear is scanned: a chunk with a non-finite result
        // (finite inputs that overflow also give one), keys no query scored, values no query weighted.
        bool suspect = false, valuesWeighted = false;
        bool* active = stackalloc bool[RowBlock];
        for (int r0 = 0; r0 < rows && scoredLo < scoredHi; r0 += RowBlock)
        {
            int block = Math.Min(RowBlock, rows - r0);
            if (block == RowBlock)
            {
                Scores4(query + ((long)r0 * d), d, keys, scoredLo, scoredHi, scores);
            }
            else
            {
                for (int r = 0; r < block; r++)
                {
                    Scores(query + ((long)(r0 + r) * d), d, keys, scoredLo, scoredHi, scores + (r * ScoreStride));
                }
            }

            int activeRows = 0;
            for (int r = 0; r < block; r++)
            {
                int row = r0 + r;
                int h = (kvHead * a.GroupSize) + (row / a.QueryCount), i = row % a.QueryCount;
                float* s = scores + (r * ScoreStride);
                float* result = partials + ((((long)b * a.Heads) + h) * perHead) + ((long)i * (dv + 2));
                suspect |= !FiniteCheck.AllFinite(new ReadOnlySpan<float>(s + scoredLo, scoredHi - scoredLo));
                float max = MaskedScores(in a, b, h, i, j0, count, s);
                result[0] = max;
                result[1] = 0f;
                active[r] = !float.IsNegativeInfinity(max);
                if (!active[r])
                {
                    // Nothing visible in this chunk: zero weights, so a block of four still sums the other rows in one pass.
                    new Span<float>(s, count).Clear();
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

                result[1] = TS.SumAcross(total);
                activeRows++;
            }

            if (activeRows == 0)
            {
                for (int r = 0; r < block; r++)
                {
                    Output(in a, b, kvHead, r0 + r, partials, perHead).Clear();
                }

                continue;
            }

            if (block == RowBlock && activeRows > 1)
            {
                WeightedSum4(scores, values, count, dv, Output(in a, b, kvHead, r0, partials, perHead), Output(in a, b, kvHead, r0 + 1, partials, perHead),
                    Output(in a, b, kvHead, r0 + 2, partials, perHead), Output(in a, b, kvHead, r0 + 3, partials, perHead));
            }

            for (int r = 0; r < block; r++)
            {
                Span<float> o = Output(in a, b, kvHead, r0 + r, partials, perHead);
                if (!active[r])
                {
                    o.Clear();
                    continue;
                }

                if (block != RowBlock || activeRows == 1)
                {
                    fixed (float* destination = o)
                    {
                        WeightedSum(scores + (r * ScoreStride), values, count, dv, destination);
                    }
                }

                suspect |= !FiniteCheck.AllFinite(o);
                valuesWeighted = true;
            }
        }

        if (scoredLo >= scoredHi)
        {
            for (int row = 0; row < rows; row++)
            {
                int h = (kvHead * a.GroupSize) + (row / a.QueryCount), i = row % a.QueryCount;
                float* result = partials + ((((long)b * a.Heads) + h) * perHead) + ((long)i * (dv + 2));
                result[0] = float.NegativeInfinity;
                result[1] = 0f;
                new Span<float>(result + 2, dv).Clear();
            }
        }

        // Non-finite inputs: scan what the results did not clear.
        if (a.FirstNonFinite != null)
        {
            if (suspect || scoredLo >= scoredHi)
            {
                ReportNonFinite(keys, 0, count, d, a.FirstNonFinite);
            }
            else
            {
                ReportNonFinite(keys, 0, scoredLo, d, a.FirstNonFinite);
                ReportNonFinite(keys, scoredHi, count, d, a.FirstNonFinite);
            }

            if (suspect || !valuesWeighted)
            {
                ReportNonFinite(values, 0, count, dv, a.FirstNonFinite + 1);
            }
        }
    }

    /// <summary>Row <paramref name="row"/>'s unnormalised output in the partials (see <see cref="Chunk"/>).</summary>
    private static Span<float> Output(in AttentionArgs a, int b, int kvHead, int row, float* partials, long perHead)
    {
        int h = (kvHead * a.GroupSize) + (row / a.QueryCount), i = row % a.QueryCount;
        return new Span<float>(partials + ((((long)b * a.Heads) + h) * perHead) + ((long)i * (a.ValueDim + 2)) + 2, a.ValueDim);
    }

    /// <summary>
    /// Turns query i's raw dot products <paramref name="s"/> into base-2 scores over the whole chunk, -infinity where the query
    /// does not see the key, and returns their max.
    /// </summary>
    private static float MaskedScores(in AttentionArgs a, int b, int h, int i, int j0, int count, float* s)
    {
        Visible(in a, i, j0, count, out int lo, out int hi, out int gapLo, out int gapHi);
        if (lo >= hi)
        {
            return float.NegativeInfinity;
        }

        if (a.Power == 0f && a.Bias == null && a.Mask == null)
        {
            // Plain scores (the decoding case): scale (times log2 e: the softmax works in base 2), hide the keys the query does
            // not see and take the max with vectors; NaN scores still reach the max.
            System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(s + lo, hi - lo), a.Scale * VectorMath.Log2E, new Span<float>(s + lo, hi - lo));
            new Span<float>(s, lo).Fill(float.NegativeInfinity);
            new Span<float>(s + hi, count - hi).Fill(float.NegativeInfinity);
            new Span<float>(s + gapLo, gapHi - gapLo).Fill(float.NegativeInfinity);
            return System.Numerics.Tensors.TensorPrimitives.Max(new ReadOnlySpan<float>(s, count));
        }

        float max = float.NegativeInfinity;
        for (int j = 0; j < count; j++)
        {
            bool visible = j >= lo && j < hi && (j < gapLo || j >= gapHi);
            float score = visible ? a.Scale * VectorMath.Log2E * s[j] : float.NegativeInfinity; // base 2, as above
            long at = ((long)i * a.KeyCount) + j0 + j;
            if (a.Power > 0f && visible)
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

        return max;
    }

    /// <summary>s_j = q . k_j for the keys lo .. hi of the chunk, four keys at a time so four independent FMA chains overlap.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Scores(float* q, int d, Rows keys, int lo, int hi, float* s)
    {
        if (TE.Type == KvElementType.Q8 && typeof(TV) == typeof(Vector512<float>) && Avx512F.IsSupported && d % KvOperand.Q8Block == 0)
        {
            ScoresQ8(q, d, keys, lo, hi, s);
            return;
        }

        // A method of its own (as is WeightedSum): inside Chunk, the JIT spilled these loops' pointers to the stack.
        // Each block of four keys is read one vector of each row at a time, which the hardware prefetchers follow
        // poorly: the lines PrefetchDistance bytes ahead are requested explicitly (1.3-1.4x at d = 64 and 128).
        int j = lo;
        long blockBytes = 4 * keys.RowBytes;
        for (; j + 4 <= hi; j += 4)
        {
            byte* block = keys.Row(j);
            Prefetch(block, blockBytes);
            Dot4(q, block, keys.RowBytes, keys.Scales(j), keys.BlocksPerRow, d, s + j);
        }

        for (; j < hi; j++)
        {
            s[j] = Dot(q, keys.Row(j), keys.Scales(j), d);
        }
    }

    /// <summary>
    /// <see cref="Scores"/> for q8 keys with 512-bit vectors and d a multiple of the block (32): the products of a block's two
    /// vectors are summed unscaled and multiplied by the block's scale once, instead of the scale into every vector (0.41 ms
    /// instead of 0.46 with K and V in cache; the q8 kernel is bound by its vector operations). <see cref="Dot4x4"/> keeps
    /// scaling each vector, shared by its four rows, so a score of one path and of the other may differ in the last bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void ScoresQ8(float* q, int d, Rows keys, int lo, int hi, float* s)
    {
        int j = lo;
        long rowBytes = keys.RowBytes, blockBytes = 4 * rowBytes;
        int blocks = keys.BlocksPerRow;
        for (; j + 4 <= hi; j += 4)
        {
            sbyte* y0 = (sbyte*)keys.Row(j);
            Prefetch((byte*)y0, blockBytes);
            sbyte* y1 = y0 + rowBytes, y2 = y1 + rowBytes, y3 = y2 + rowBytes;
            float* c0 = keys.Scales(j), c1 = c0 + blocks, c2 = c1 + blocks, c3 = c2 + blocks;
            Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
            for (int t = 0, b = 0; t < d; t += KvOperand.Q8Block, b++)
            {
                Vector512<float> x0 = Vector512.Load(q + t), x1 = Vector512.Load(q + t + 16);
                a0 = BlockDot(x0, x1, y0 + t, c0[b], a0);
                a1 = BlockDot(x0, x1, y1 + t, c1[b], a1);
                a2 = BlockDot(x0, x1, y2 + t, c2[b], a2);
                a3 = BlockDot(x0, x1, y3 + t, c3[b], a3);
            }

            Sum4(Unsafe.As<Vector512<float>, TV>(ref a0), Unsafe.As<Vector512<float>, TV>(ref a1), Unsafe.As<Vector512<float>, TV>(ref a2),
                Unsafe.As<Vector512<float>, TV>(ref a3), s + j);
        }

        for (; j < hi; j++)
        {
            sbyte* y = (sbyte*)keys.Row(j);
            float* c = keys.Scales(j);
            Vector512<float> a = Vector512<float>.Zero;
            for (int t = 0, b = 0; t < d; t += KvOperand.Q8Block, b++)
            {
                a = BlockDot(Vector512.Load(q + t), Vector512.Load(q + t + 16), y + t, c[b], a);
            }

            s[j] = Vector512.Sum(a);
        }
    }

    /// <summary>acc + scale (x0 b0 + x1 b1) for the block of 32 q8 bytes b at y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> BlockDot(Vector512<float> x0, Vector512<float> x1, sbyte* y, float scale, Vector512<float> acc) =>
        Avx512F.FusedMultiplyAdd(Avx512F.FusedMultiplyAdd(x1, Bytes16(y + 16), x0 * Bytes16(y)), Vector512.Create(scale), acc);

    /// <summary>
    /// s_r[j] = q_r . k_j (s_r = s + r ScoreStride) for four consecutive query rows and the keys lo .. hi: each key vector is
    /// loaded (and widened) once for the four rows, four keys at a time, sixteen FMA chains.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Scores4(float* q, int d, Rows keys, int lo, int hi, float* s)
    {
        int j = lo;
        long blockBytes = 4 * keys.RowBytes;
        for (; j + 4 <= hi; j += 4)
        {
            byte* block = keys.Row(j);
            Prefetch(block, blockBytes);
            Dot4x4(q, d, block, keys.RowBytes, keys.Scales(j), keys.BlocksPerRow, s + j);
        }

        for (; j < hi; j++)
        {
            for (int r = 0; r < RowBlock; r++)
            {
                s[(r * ScoreStride) + j] = Dot(q + ((long)r * d), keys.Row(j), keys.Scales(j), d);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(byte* block, long bytes)
    {
        if (Sse.IsSupported)
        {
            byte* ahead = block + PrefetchDistance;
            for (long offset = 0; offset < bytes; offset += 64)
            {
                Sse.Prefetch0(ahead + offset); // a hint: never faults, even past the end of K or of a page
            }
        }
    }

    /// <summary>Elements t .. t + TS.Count of a stored row, widened.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TV Load(byte* row, float* scales, int t)
    {
        if (TE.Type != KvElementType.Q8)
        {
            return KvWiden.Load<TV>(TE.Type, row, null, t);
        }

        // q8: bytes times the block's scale, already a float (converting a float16 scale for every vector cost 10x).
        // The product of an 8-bit integer and a float16 is exact in float32, as KvWiden's.
        if (typeof(TV) == typeof(Vector512<float>))
        {
            Vector128<sbyte> sixteen = Vector128.Load((sbyte*)row + t);
            Vector512<int> bytes = Avx512F.IsSupported
                ? Avx512F.ConvertToVector512Int32(sixteen)
                : Vector512.Create(Widen8(Vector128.WidenLower(sixteen)), Widen8(Vector128.WidenUpper(sixteen)));
            Vector512<float> v = Vector512.ConvertToSingle(bytes) * Vector512.Create(scales[t / KvOperand.Q8Block]);
            return Unsafe.As<Vector512<float>, TV>(ref v);
        }

        if (typeof(TV) == typeof(Vector256<float>))
        {
            // Eight bytes only: a 16-byte load could read past the end of the last row.
            Vector128<sbyte> eight = Vector128.CreateScalarUnsafe(*(long*)((sbyte*)row + t)).AsSByte();
            Vector256<int> bytes = Avx2.IsSupported
                ? Avx2.ConvertToVector256Int32(eight)
                : Widen8(Vector128.WidenLower(eight));
            Vector256<float> v = Vector256.ConvertToSingle(bytes) * Vector256.Create(scales[t / KvOperand.Q8Block]);
            return Unsafe.As<Vector256<float>, TV>(ref v);
        }

        float x = Element(row, scales, t);
        return Unsafe.As<float, TV>(ref x);
    }

    /// <summary>Eight 16-bit integers sign-extended to 32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Widen8(Vector128<short> x) => Vector256.Create(Vector128.WidenLower(x), Vector128.WidenUpper(x));

    /// <summary>Element t of a stored row, widened.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Element(byte* row, float* scales, int t) =>
        TE.Type == KvElementType.Q8 ? ((sbyte*)row)[t] * scales[t / KvOperand.Q8Block] : KvWiden.Scalar(TE.Type, row, null, t);

    /// <summary>
    /// o = sum_j p_j v_j over the chunk's keys, with blocks of eight, four, two or one vectors of o held in registers across
    /// all keys (dv = 64 or 128 with 512-bit vectors is one pass over V); each element is summed in key order, one FMA per key.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum(float* p, Rows values, int count, int dv, float* o)
    {
        int w = TS.Count, c = 0;
        long stride = values.RowBytes;
        int blocks = values.BlocksPerRow;
        if (TE.Type == KvElementType.Q8 && typeof(TV) == typeof(Vector512<float>) && Avx512F.IsSupported)
        {
            c = WeightedSumQ8(p, values, count, dv, o);
        }

        for (; c + (8 * w) <= dv; c += 8 * w)
        {
            TV z = TS.Broadcast(0f), o0 = z, o1 = z, o2 = z, o3 = z, o4 = z, o5 = z, o6 = z, o7 = z;
            byte* v = values.Row(0);
            float* sc = values.Scales(0);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, Load(v, sc, c), o0);
                o1 = TS.MultiplyAdd(pj, Load(v, sc, c + w), o1);
                o2 = TS.MultiplyAdd(pj, Load(v, sc, c + (2 * w)), o2);
                o3 = TS.MultiplyAdd(pj, Load(v, sc, c + (3 * w)), o3);
                o4 = TS.MultiplyAdd(pj, Load(v, sc, c + (4 * w)), o4);
                o5 = TS.MultiplyAdd(pj, Load(v, sc, c + (5 * w)), o5);
                o6 = TS.MultiplyAdd(pj, Load(v, sc, c + (6 * w)), o6);
                o7 = TS.MultiplyAdd(pj, Load(v, sc, c + (7 * w)), o7);
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
            byte* v = values.Row(0);
            float* sc = values.Scales(0);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, Load(v, sc, c), o0);
                o1 = TS.MultiplyAdd(pj, Load(v, sc, c + w), o1);
                o2 = TS.MultiplyAdd(pj, Load(v, sc, c + (2 * w)), o2);
                o3 = TS.MultiplyAdd(pj, Load(v, sc, c + (3 * w)), o3);
            }

            TS.Store(o0, ref o[c]);
            TS.Store(o1, ref o[c + w]);
            TS.Store(o2, ref o[c + (2 * w)]);
            TS.Store(o3, ref o[c + (3 * w)]);
        }

        for (; c + (2 * w) <= dv; c += 2 * w)
        {
            TV o0 = TS.Broadcast(0f), o1 = o0;
            byte* v = values.Row(0);
            float* sc = values.Scales(0);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                TV pj = TS.Broadcast(p[j]);
                o0 = TS.MultiplyAdd(pj, Load(v, sc, c), o0);
                o1 = TS.MultiplyAdd(pj, Load(v, sc, c + w), o1);
            }

            TS.Store(o0, ref o[c]);
            TS.Store(o1, ref o[c + w]);
        }

        for (; c + w <= dv; c += w)
        {
            TV o0 = TS.Broadcast(0f);
            byte* v = values.Row(0);
            float* sc = values.Scales(0);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                o0 = TS.MultiplyAdd(TS.Broadcast(p[j]), Load(v, sc, c), o0);
            }

            TS.Store(o0, ref o[c]);
        }

        for (; c < dv; c++)
        {
            float total = 0f;
            byte* v = values.Row(0);
            float* sc = values.Scales(0);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                total = MathF.FusedMultiplyAdd(p[j], Element(v, sc, c), total);
            }

            o[c] = total;
        }
    }

    /// <summary>
    /// q8 values, one query row, 128 columns at a time: o += (p_j scale_jb) q_j, the weight and the block's scale multiplied
    /// once per block of 32 instead of the scale into every vector (the q8 decoding kernel is bound by these operations).
    /// Returns the columns done; <see cref="WeightedSum"/> does the rest.
    /// </summary>
    private static int WeightedSumQ8(float* p, Rows values, int count, int dv, float* o)
    {
        long stride = values.RowBytes;
        int blocks = values.BlocksPerRow, c = 0;
        for (; c + 128 <= dv; c += 128)
        {
            Vector512<float> o0 = Vector512<float>.Zero, o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
            sbyte* v = (sbyte*)values.Row(0) + c;
            float* sc = values.Scales(0) + (c / KvOperand.Q8Block);
            for (int j = 0; j < count; j++, v += stride, sc += blocks)
            {
                float pj = p[j];
                Vector512<float> w0 = Vector512.Create(pj * sc[0]), w1 = Vector512.Create(pj * sc[1]);
                Vector512<float> w2 = Vector512.Create(pj * sc[2]), w3 = Vector512.Create(pj * sc[3]);
                o0 = Avx512F.FusedMultiplyAdd(w0, Bytes16(v), o0);
                o1 = Avx512F.FusedMultiplyAdd(w0, Bytes16(v + 16), o1);
                o2 = Avx512F.FusedMultiplyAdd(w1, Bytes16(v + 32), o2);
                o3 = Avx512F.FusedMultiplyAdd(w1, Bytes16(v + 48), o3);
                o4 = Avx512F.FusedMultiplyAdd(w2, Bytes16(v + 64), o4);
                o5 = Avx512F.FusedMultiplyAdd(w2, Bytes16(v + 80), o5);
                o6 = Avx512F.FusedMultiplyAdd(w3, Bytes16(v + 96), o6);
                o7 = Avx512F.FusedMultiplyAdd(w3, Bytes16(v + 112), o7);
            }

            o0.Store(o + c);
            o1.Store(o + c + 16);
            o2.Store(o + c + 32);
            o3.Store(o + c + 48);
            o4.Store(o + c + 64);
            o5.Store(o + c + 80);
            o6.Store(o + c + 96);
            o7.Store(o + c + 112);
        }

        return c;
    }

    /// <summary>Sixteen q8 bytes as floats (unscaled).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Bytes16(sbyte* v) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(v)));

    /// <summary>
    /// o_r = sum_j p_r[j] v_j for four rows of weights (p_r = p + r ScoreStride): each value vector is loaded (and widened) once
    /// for the four rows, in blocks of four, two or one vectors of each o_r; each element is summed as <see cref="WeightedSum"/> sums it.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum4(float* p, Rows values, int count, int dv, Span<float> out0, Span<float> out1, Span<float> out2, Span<float> out3)
    {
        int w = TS.Count, c = 0;
        long stride = values.RowBytes;
        int blocks = values.BlocksPerRow;
        float* p0 = p, p1 = p + ScoreStride, p2 = p + (2 * ScoreStride), p3 = p + (3 * ScoreStride);
        fixed (float* d0 = out0)
        fixed (float* d1 = out1)
        fixed (float* d2 = out2)
        fixed (float* d3 = out3)
        {
            for (; c + (4 * w) <= dv; c += 4 * w)
            {
                TV z = TS.Broadcast(0f);
                TV a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z, c0 = z, c1 = z, c2 = z, c3 = z, e0 = z, e1 = z, e2 = z, e3 = z;
                byte* v = values.Row(0);
                float* sc = values.Scales(0);
                for (int j = 0; j < count; j++, v += stride, sc += blocks)
                {
                    if (c == 0)
                    {
                        // The first block of columns reads part of each row; the rest of the row, read by the next blocks,
                        // is requested with it, PrefetchDistance ahead (the hardware prefetchers miss this strided pattern).
                        Prefetch(v, stride);
                    }

                    TV x0 = Load(v, sc, c), x1 = Load(v, sc, c + w), x2 = Load(v, sc, c + (2 * w)), x3 = Load(v, sc, c + (3 * w));
                    TV pj = TS.Broadcast(p0[j]);
                    a0 = TS.MultiplyAdd(pj, x0, a0);
                    a1 = TS.MultiplyAdd(pj, x1, a1);
                    a2 = TS.MultiplyAdd(pj, x2, a2);
                    a3 = TS.MultiplyAdd(pj, x3, a3);
                    pj = TS.Broadcast(p1[j]);
                    b0 = TS.MultiplyAdd(pj, x0, b0);
                    b1 = TS.MultiplyAdd(pj, x1, b1);
                    b2 = TS.MultiplyAdd(pj, x2, b2);
                    b3 = TS.MultiplyAdd(pj, x3, b3);
                    pj = TS.Broadcast(p2[j]);
                    c0 = TS.MultiplyAdd(pj, x0, c0);
                    c1 = TS.MultiplyAdd(pj, x1, c1);
                    c2 = TS.MultiplyAdd(pj, x2, c2);
                    c3 = TS.MultiplyAdd(pj, x3, c3);
                    pj = TS.Broadcast(p3[j]);
                    e0 = TS.MultiplyAdd(pj, x0, e0);
                    e1 = TS.MultiplyAdd(pj, x1, e1);
                    e2 = TS.MultiplyAdd(pj, x2, e2);
                    e3 = TS.MultiplyAdd(pj, x3, e3);
                }

                Store4(a0, a1, a2, a3, d0 + c);
                Store4(b0, b1, b2, b3, d1 + c);
                Store4(c0, c1, c2, c3, d2 + c);
                Store4(e0, e1, e2, e3, d3 + c);
            }

            for (; c + w <= dv; c += w)
            {
                TV a0 = TS.Broadcast(0f), b0 = a0, c0 = a0, e0 = a0;
                byte* v = values.Row(0);
                float* sc = values.Scales(0);
                for (int j = 0; j < count; j++, v += stride, sc += blocks)
                {
                    TV x0 = Load(v, sc, c);
                    a0 = TS.MultiplyAdd(TS.Broadcast(p0[j]), x0, a0);
                    b0 = TS.MultiplyAdd(TS.Broadcast(p1[j]), x0, b0);
                    c0 = TS.MultiplyAdd(TS.Broadcast(p2[j]), x0, c0);
                    e0 = TS.MultiplyAdd(TS.Broadcast(p3[j]), x0, e0);
                }

                TS.Store(a0, ref d0[c]);
                TS.Store(b0, ref d1[c]);
                TS.Store(c0, ref d2[c]);
                TS.Store(e0, ref d3[c]);
            }

            for (; c < dv; c++)
            {
                float t0 = 0f, t1 = 0f, t2 = 0f, t3 = 0f;
                byte* v = values.Row(0);
                float* sc = values.Scales(0);
                for (int j = 0; j < count; j++, v += stride, sc += blocks)
                {
                    float x = Element(v, sc, c);
                    t0 = MathF.FusedMultiplyAdd(p0[j], x, t0);
                    t1 = MathF.FusedMultiplyAdd(p1[j], x, t1);
                    t2 = MathF.FusedMultiplyAdd(p2[j], x, t2);
                    t3 = MathF.FusedMultiplyAdd(p3[j], x, t3);
                }

                d0[c] = t0;
                d1[c] = t1;
                d2[c] = t2;
                d3[c] = t3;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store4(TV x0, TV x1, TV x2, TV x3, float* o)
    {
        int w = TS.Count;
        TS.Store(x0, ref o[0]);
        TS.Store(x1, ref o[w]);
        TS.Store(x2, ref o[2 * w]);
        TS.Store(x3, ref o[3 * w]);
    }

    /// <summary>Lowers <paramref name="first"/> if rows lo .. hi of the chunk hold a non-finite element: to its flat index for
    /// contiguous float32 (as the float32 entry reports it), to 0 otherwise (the typed entry then scans the tensor for it).</summary>
    private static void ReportNonFinite(Rows rows, int lo, int hi, int rowLength, long* first)
    {
        if (lo >= hi)
        {
            return;
        }

        long n = (long)(hi - lo) * rowLength;
        if (TE.Type == KvElementType.Float32)
        {
            int bad = FiniteCheck.FirstNonFinite(new ReadOnlySpan<float>(rows.Row(lo), (int)n));
            if (bad >= 0)
            {
                Lower(first, rows.IsPaged ? 0 : rows.FlatIndex(lo) + bad);
            }

            return;
        }

        // float16 and bfloat16 are non-finite when their exponent bits are all ones; q8's bytes are always finite, its scales
        // (widened exactly, so a non-finite float16 stays non-finite) may not be.
        bool bad16 = TE.Type switch
        {
            KvElementType.Float16 => AnyExponentOnes((ushort*)rows.Row(lo), n, 0x7c00),
            KvElementType.BFloat16 => AnyExponentOnes((ushort*)rows.Row(lo), n, 0x7f80),
            _ => !FiniteCheck.AllFinite(new ReadOnlySpan<float>(rows.Scales(lo), (hi - lo) * rows.BlocksPerRow)),
        };
        if (bad16)
        {
            Lower(first, 0);
        }
    }

    private static bool AnyExponentOnes(ushort* bits, long n, ushort exponent)
    {
        long t = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<ushort> mask = Vector256.Create(exponent);
            for (; t + 16 <= n; t += 16)
            {
                if (Vector256.EqualsAny(Vector256.Load(bits + t) & mask, mask))
                {
                    return true;
                }
            }
        }

        for (; t < n; t++)
        {
            if ((bits[t] & exponent) == exponent)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Lowers *first to at (several chunks may race).</summary>
    private static void Lower(long* first, long at)
    {
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

    /// <summary>s[0..4] = x . y_r for the four consecutive stored rows y_r (<paramref name="rowBytes"/> apart) of length d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* x, byte* y, long rowBytes, float* scales, int blocks, int d, float* s)
    {
        int w = TS.Count;
        TV a0 = TS.Broadcast(0f), a1 = a0, a2 = a0, a3 = a0;
        byte* y1 = y + rowBytes, y2 = y1 + rowBytes, y3 = y2 + rowBytes;
        float* c0 = scales, c1 = c0 + blocks, c2 = c1 + blocks, c3 = c2 + blocks;
        int t = 0;
        for (; t + w <= d; t += w)
        {
            TV xv = TS.Load(ref x[t]);
            a0 = TS.MultiplyAdd(xv, Load(y, c0, t), a0);
            a1 = TS.MultiplyAdd(xv, Load(y1, c1, t), a1);
            a2 = TS.MultiplyAdd(xv, Load(y2, c2, t), a2);
            a3 = TS.MultiplyAdd(xv, Load(y3, c3, t), a3);
        }

        Sum4(a0, a1, a2, a3, s);
        float s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
        for (; t < d; t++)
        {
            s0 = MathF.FusedMultiplyAdd(x[t], Element(y, c0, t), s0);
            s1 = MathF.FusedMultiplyAdd(x[t], Element(y1, c1, t), s1);
            s2 = MathF.FusedMultiplyAdd(x[t], Element(y2, c2, t), s2);
            s3 = MathF.FusedMultiplyAdd(x[t], Element(y3, c3, t), s3);
        }

        s[0] = s0;
        s[1] = s1;
        s[2] = s2;
        s[3] = s3;
    }

    /// <summary>s_r[k] = x_r . y_k for four query rows x_r (d apart) and four stored rows y_k; s_r = s + r ScoreStride.</summary>
    /// <remarks>Too large for the JIT to inline: compiled fully optimised from the first call, as the callers are.</remarks>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x4(float* x, int d, byte* y, long rowBytes, float* scales, int blocks, float* s)
    {
        int w = TS.Count;
        TV z = TS.Broadcast(0f);
        TV a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z, c0 = z, c1 = z, c2 = z, c3 = z, e0 = z, e1 = z, e2 = z, e3 = z;
        byte* y1 = y + rowBytes, y2 = y1 + rowBytes, y3 = y2 + rowBytes;
        float* k0 = scales, k1 = k0 + blocks, k2 = k1 + blocks, k3 = k2 + blocks;
        float* x1 = x + d, x2 = x1 + d, x3 = x2 + d;
        int t = 0;
        for (; t + w <= d; t += w)
        {
            TV v0 = Load(y, k0, t), v1 = Load(y1, k1, t), v2 = Load(y2, k2, t), v3 = Load(y3, k3, t);
            TV xv = TS.Load(ref x[t]);
            a0 = TS.MultiplyAdd(xv, v0, a0);
            a1 = TS.MultiplyAdd(xv, v1, a1);
            a2 = TS.MultiplyAdd(xv, v2, a2);
            a3 = TS.MultiplyAdd(xv, v3, a3);
            xv = TS.Load(ref x1[t]);
            b0 = TS.MultiplyAdd(xv, v0, b0);
            b1 = TS.MultiplyAdd(xv, v1, b1);
            b2 = TS.MultiplyAdd(xv, v2, b2);
            b3 = TS.MultiplyAdd(xv, v3, b3);
            xv = TS.Load(ref x2[t]);
            c0 = TS.MultiplyAdd(xv, v0, c0);
            c1 = TS.MultiplyAdd(xv, v1, c1);
            c2 = TS.MultiplyAdd(xv, v2, c2);
            c3 = TS.MultiplyAdd(xv, v3, c3);
            xv = TS.Load(ref x3[t]);
            e0 = TS.MultiplyAdd(xv, v0, e0);
            e1 = TS.MultiplyAdd(xv, v1, e1);
            e2 = TS.MultiplyAdd(xv, v2, e2);
            e3 = TS.MultiplyAdd(xv, v3, e3);
        }

        // The lanes summed here (vectors passed to a helper made the JIT keep all sixteen accumulators on the stack), then the
        // scalar tail from t, as Dot4 finishes them.
        float* s1 = s + ScoreStride, s2 = s1 + ScoreStride, s3 = s2 + ScoreStride;
        Sum4(a0, a1, a2, a3, s);
        Sum4(b0, b1, b2, b3, s1);
        Sum4(c0, c1, c2, c3, s2);
        Sum4(e0, e1, e2, e3, s3);
        for (; t < d; t++)
        {
            float k0t = Element(y, k0, t), k1t = Element(y1, k1, t), k2t = Element(y2, k2, t), k3t = Element(y3, k3, t);
            for (int r = 0; r < RowBlock; r++)
            {
                float* sr = s + (r * ScoreStride);
                float xr = x[(r * d) + t];
                sr[0] = MathF.FusedMultiplyAdd(xr, k0t, sr[0]);
                sr[1] = MathF.FusedMultiplyAdd(xr, k1t, sr[1]);
                sr[2] = MathF.FusedMultiplyAdd(xr, k2t, sr[2]);
                sr[3] = MathF.FusedMultiplyAdd(xr, k3t, sr[3]);
            }
        }
    }

    /// <summary>
    /// s[k] = the sum of the lanes of a_k, for four vectors at once: 13 shuffles and adds with 512-bit vectors where four
    /// <c>Vector512.Sum</c> take about 100 (the grouped-query scores spent more on them than on the dot products). The sums are
    /// taken in the tree <c>Vector512.Sum</c> and <c>Vector256.Sum</c> use, adjacent lanes first, then pairs, then 128-bit
    /// blocks, then halves, so every bit is theirs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Sum4(TV a0, TV a1, TV a2, TV a3, float* s)
    {
        if (typeof(TV) == typeof(Vector512<float>) && Avx512F.IsSupported)
        {
            Vector512<float> x0 = Unsafe.As<TV, Vector512<float>>(ref a0), x1 = Unsafe.As<TV, Vector512<float>>(ref a1);
            Vector512<float> x2 = Unsafe.As<TV, Vector512<float>>(ref a2), x3 = Unsafe.As<TV, Vector512<float>>(ref a3);

            // Per 128-bit block: adjacent lanes (0x88 takes the even lanes of both, 0xdd the odd), then pairs of pairs.
            Vector512<float> p01 = Avx512F.Shuffle(x0, x1, 0x88) + Avx512F.Shuffle(x0, x1, 0xdd);
            Vector512<float> p23 = Avx512F.Shuffle(x2, x3, 0x88) + Avx512F.Shuffle(x2, x3, 0xdd);
            Vector512<float> quads = Avx512F.Shuffle(p01, p23, 0x88) + Avx512F.Shuffle(p01, p23, 0xdd);

            // Blocks 0 + 1 and 2 + 3, then their sum.
            Vector512<float> halves = quads + Avx512F.Shuffle4x128(quads, quads, 0xb1);
            Vector128<float> total = halves.GetLower().GetLower() + halves.GetUpper().GetLower();
            total.Store(s);
            return;
        }

        if (typeof(TV) == typeof(Vector256<float>) && Avx.IsSupported)
        {
            Vector256<float> x0 = Unsafe.As<TV, Vector256<float>>(ref a0), x1 = Unsafe.As<TV, Vector256<float>>(ref a1);
            Vector256<float> x2 = Unsafe.As<TV, Vector256<float>>(ref a2), x3 = Unsafe.As<TV, Vector256<float>>(ref a3);
            Vector256<float> p01 = Avx.Shuffle(x0, x1, 0x88) + Avx.Shuffle(x0, x1, 0xdd);
            Vector256<float> p23 = Avx.Shuffle(x2, x3, 0x88) + Avx.Shuffle(x2, x3, 0xdd);
            Vector256<float> quads = Avx.Shuffle(p01, p23, 0x88) + Avx.Shuffle(p01, p23, 0xdd);
            (quads.GetLower() + quads.GetUpper()).Store(s);
            return;
        }

        s[0] = TS.SumAcross(a0);
        s[1] = TS.SumAcross(a1);
        s[2] = TS.SumAcross(a2);
        s[3] = TS.SumAcross(a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* x, byte* y, float* scales, int d)
    {
        int w = TS.Count;
        TV acc = TS.Broadcast(0f);
        int t = 0;
        for (; t + w <= d; t += w)
        {
            acc = TS.MultiplyAdd(TS.Load(ref x[t]), Load(y, scales, t), acc);
        }

        float total = TS.SumAcross(acc);
        for (; t < d; t++)
        {
            total = MathF.FusedMultiplyAdd(x[t], Element(y, scales, t), total);
        }

        return total;
    }

    /// <summary>
    /// A chunk's rows of one kv head of a stored operand, in one piece of memory (a chunk never crosses a page): row j of the
    /// chunk at <see cref="Row"/>(j), its q8 scales at <see cref="Scales"/>(j).
    /// </summary>
    private readonly struct Rows
    {
        private readonly byte* _first;
        private readonly float* _scales;
        private readonly long _flat;

        /// <summary>Rows j0 .. of <paramref name="group"/>; q8 <paramref name="scales"/> are the chunk's, widened to floats (<see cref="BlocksPerRow"/> a row).</summary>
        public Rows(KvOperand operand, long group, int j0, float* scales)
        {
            _first = operand.Row(group, j0);
            _scales = scales;
            RowBytes = (long)operand.RowLength * operand.ElementSize;
            BlocksPerRow = operand.BlocksPerRow;
            IsPaged = operand.IsPaged;
            _flat = ((group * operand.Rows) + j0) * operand.RowLength;
            RowLength = operand.RowLength;
        }

        public long RowBytes { get; }

        public int BlocksPerRow { get; }

        public int RowLength { get; }

        public bool IsPaged { get; }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public byte* Row(int j) => _first + (j * RowBytes);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float* Scales(int j) => _scales + ((long)j * BlocksPerRow);

        /// <summary>The flat index of row j's first element in a contiguous operand.</summary>
        public long FlatIndex(int j) => _flat + ((long)j * RowLength);
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
