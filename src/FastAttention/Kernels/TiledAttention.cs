using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FastAttention.Kernels;

/// <summary>
/// Exact softmax attention by tiled online softmax (FlashAttention's algorithm, docs/algorithms.md §1),
/// written once over a vector width <typeparamref name="TS"/>. The <c>nq x nk</c> score matrix is never
/// formed: each worker owns one (batch, head, query tile) and streams key tiles through it:
/// <list type="number">
/// <item>S = (s Q_tile) K_tile^T by the shared 6-row micro-kernel (4 vectors wide with 512-bit registers, <see cref="MicroKernel{TS, TV}.Run6"/>;
/// 2 with 256-bit, <see cref="MicroKernel{TS, TV}.Run6x2"/>) over packed key panels;</item>
/// <item>bias, mask, causal limit, sliding window and key padding applied to S (masked scores become -inf);</item>
/// <item>per row: m' = max(m, rowmax S), alpha = 2^(m - m'), P = 2^(S - m'), l = alpha l + sum P (S carries a factor log2 e, so 2^S = e^(s q.k));</item>
/// <item>O = alpha O + P V_tile by the same micro-kernel, accumulating each chunk from zero (blocked summation);</item>
/// <item>after the last key tile, out = O / l (a row that saw no key outputs zeros).</item>
/// </list>
/// Keys and values are read through <see cref="AttentionArgs.Keys"/> and <see cref="AttentionArgs.Values"/> in any storage type,
/// contiguous or paged: packing widens them to float32 exactly, so a typed run gives the bits of the float32 run on the decoded
/// values. A sliding window (<see cref="AttentionArgs.Window"/>, with sinks) is masked in step 2, and key tiles and micro-tiles
/// that no row of a tile sees are skipped, so a window of w keys costs about w + 120 (a query tile's spread) keys per query, not nk.
/// Work items never share state, so the output bits do not depend on the thread count.
/// The tile sizes and the passes below are internal for the benchmarks' per-pass timer (bench PassTimer), which replays them.
/// </summary>
internal static unsafe class TiledAttention<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>Floats of packed keys (and copied values) held at once by default: 64 MiB, within the buffer pool's limit.</summary>
    public const long DefaultPackBudgetFloats = 16L << 20;

    /// <summary>Keys per parallel packing work item (a multiple of every strip width).</summary>
    private const int PackChunk = 1024;

    /// <summary>Query rows per work item: a multiple of <see cref="RowAlign"/>.</summary>
    internal const int QueryTile = 120;

    /// <summary>Keys per tile: S (120 x 528 floats, 253 KiB) stays in L2; the per-row softmax bookkeeping is amortised over 32 vectors.</summary>
    internal const int KeyTile = 512;

    /// <summary>Row stride of the score tile: one cache line more than <see cref="KeyTile"/>, so the rows of a
    /// micro-tile do not alias in the L1 cache (4 KiB aliasing) or in store-to-load forwarding.</summary>
    internal const int ScoreStride = KeyTile + 16;

    /// <summary>Keys per P V chunk: 128 rows of V (32 KiB at dv = 64) stay in L1 across the row blocks; O is read and written once per chunk.</summary>
    internal const int ValueChunk = 128;

    /// <summary>Query rows per micro-tile of both products (6 rows x 4 vectors = 24 independent FMA chains).</summary>
    private const int Rows = MicroKernel<TS, TV>.TallRows;

    /// <summary>Padded rows are a multiple of this (6-row, 8-row and 4-row tiles all divide it; so does <see cref="QueryTile"/>).</summary>
    internal const int RowAlign = 24;

    private static int Width => TS.Count;

    /// <summary>Keys per score micro-tile (and value columns per P V micro-tile): four vectors where there are 32 vector registers
    /// (512-bit), two on 16-register machines (AVX2), where a 6 x 4-vector tile's 24 accumulators spill (measured: the 6 x 2 form
    /// ran the same products about twice as fast per flop on a Zen 3). The per-element summation order is the same either way.</summary>
    private static int Strip => MicroKernel<TS, TV>.StripColumns;

    /// <summary>Keys are padded to a multiple of four vectors whatever the strip: the softmax passes run four chains.</summary>
    private static int KeyAlign => 4 * TS.Count;

    /// <summary>Runs the kernel on keys and values of any storage type (they share one; see <see cref="AttentionArgs.StorageType"/>).</summary>
    public static void Run(AttentionArgs a)
    {
        switch (a.StorageType)
        {
            case KvElementType.Float32:
                Run<KvFloat32>(a);
                break;
            case KvElementType.Float16:
                Run<KvFloat16>(a);
                break;
            case KvElementType.BFloat16:
                Run<KvBFloat16>(a);
                break;
            default:
                Run<KvQ8>(a);
                break;
        }
    }

    private static void Run<TE>(AttentionArgs a)
        where TE : struct, IKvElement
    {
        KvOperand keyStore = a.Keys, valueStore = a.Values;
        int paddedKeys = RoundUp(a.KeyCount, KeyAlign);
        int paddedValueDim = RoundUp(a.ValueDim, Width);
        int groups = a.Batch * a.KvHeads;
        long keyPanelSize = (long)paddedKeys * a.HeadDim;

        // V is read in place when it is contiguous float32 with rows of whole vectors (the P V product reads only real keys,
        // never the padding of the last key panel); otherwise it is widened into zero-padded rows.
        bool copyValues = paddedValueDim != a.ValueDim || !valueStore.IsContiguousFloat32;
        long valueBlockSize = copyValues ? (long)paddedKeys * paddedValueDim : (long)a.KeyCount * a.ValueDim;
        float* inPlaceValues = copyValues ? null : (float*)valueStore.Data;

        // Kv heads are packed and run in passes whose packed keys (and copied values) fit the budget: one pooled buffer
        // however many heads there are, extra memory O(n d) per pass (a whole 32-head, 32768-key, d = 128 cache packed
        // at once was 512 MiB, past the pool's limit: allocated and page-faulted on every call, ~1 s on this machine).
        long perGroup = keyPanelSize + (copyValues ? valueBlockSize : 0);
        long budget = a.PackBudgetFloats > 0 ? a.PackBudgetFloats : DefaultPackBudgetFloats;
        int groupsPerBatch = (int)Math.Clamp(budget / perGroup, 1, groups);
        using NativeBufferPool.Buffer keyBuffer = NativeBufferPool.Rent(groupsPerBatch * keyPanelSize);
        using NativeBufferPool.Buffer valueBuffer = NativeBufferPool.Rent(copyValues ? groupsPerBatch * valueBlockSize : 0);
        float* keys = keyBuffer.Pointer;
        float* copied = valueBuffer.Pointer;

        var options = new ParallelOptions { MaxDegreeOfParallelism = a.MaxDegreeOfParallelism > 0 ? a.MaxDegreeOfParallelism : -1 };
        int packChunks = (paddedKeys + PackChunk - 1) / PackChunk;
        int queryTiles = (a.QueryCount + QueryTile - 1) / QueryTile;
        for (int g0 = 0; g0 < groups; g0 += groupsPerBatch)
        {
            int passGroups = Math.Min(groupsPerBatch, groups - g0);

            // Pass 0: pack each (batch, kv head) of this pass once, in parallel chunks of keys (one head's packing
            // done serially was ~5% of a 4096-token call and capped the two-thread speed-up):
            // K into [nk/strip][d][strip] panels, V (if copied) into [nk][dv rounded up to a vector], both widened to float32.
            // One thread (the tensor engine's small calls) packs inline: a parallel region costs more than a small pack.
            ForEach(passGroups * packChunks, options, item =>
            {
                int slot = item / packChunks, g = g0 + slot;
                int j0 = item % packChunks * PackChunk, j1 = Math.Min(paddedKeys, j0 + PackChunk);
                PackKeys<TE>(in keyStore, g, keys + (slot * keyPanelSize), j0, j1);
                if (copyValues)
                {
                    PackValues<TE>(in valueStore, g, copied + (slot * valueBlockSize), paddedValueDim, j0, j1);
                }
            });

            // Pass 1: the (head, query tile) items of this pass's query heads (those of kv groups g0 .. g0 + passGroups:
            // heads g0 G .. (g0 + passGroups) G in (batch, head) order), handed out one at a time from a shared counter so the threads
            // finish together. Non-causal items go head by head (a head's packed K/V stays in cache); causal items go
            // heaviest first (the last query tiles see the most keys). The order changes no bits: items are independent.
            int heads = passGroups * a.GroupSize;
            ParallelWork.Run(heads * queryTiles, a.MaxDegreeOfParallelism, () => new Scratch(a.HeadDim, paddedValueDim), (item, scratch) =>
            {
                (int local, int tile) = a.Causal
                    ? (item % heads, queryTiles - 1 - (item / heads))
                    : (item / queryTiles, item % queryTiles);
                int bh = (g0 * a.GroupSize) + local;
                int slot = local / a.GroupSize;
                float* values = copyValues ? copied + (slot * valueBlockSize) : inPlaceValues + ((g0 + slot) * valueBlockSize);
                RunTile(in a, bh / a.Heads, bh % a.Heads, tile * QueryTile, keys + (slot * keyPanelSize), values, paddedValueDim, scratch);
            });
        }
    }

    /// <summary>Parallel.For over 0 .. count, or a plain loop when one thread (or one item) is all there is.</summary>
    private static void ForEach(int count, ParallelOptions options, Action<int> body)
    {
        if (options.MaxDegreeOfParallelism == 1 || count == 1)
        {
            for (int item = 0; item < count; item++)
            {
                body(item);
            }

            return;
        }

        Parallel.For(0, count, options, body);
    }

    // Kernels are compiled fully optimised at once: tiering's instrumented and OSR versions run the
    // first calls (often all of a CLI run) several times slower.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunTile(in AttentionArgs a, int b, int h, int i0, float* keys, float* values, int paddedValueDim, Scratch scratch)
    {
        int d = a.HeadDim;
        int rows = Math.Min(QueryTile, a.QueryCount - i0);
        int paddedRows = Math.Min(QueryTile, RoundUp(rows, RowAlign));
        long bh = ((long)b * a.Heads) + h;
        float* query = a.Query + (((bh * a.QueryCount) + i0) * d);
        float* output = a.Output + (((bh * a.QueryCount) + i0) * a.ValueDim);
        float* q = scratch.Query;
        float* o = scratch.Output;

        // The scale is folded into the query tile once (times log2 e: the softmax works in base 2, see
        // VectorMath.Exp2NonPositive; power scores get the factor after their transform); padded rows are zero.
        // Vectorised, as is step 5's division (scalar loops, they were 0.6% of a 4096-token call and 3-5% of a 1024-token one
        // on a Zen 4): each element rounds the same either way.
        float scale = a.Power > 0f ? a.Scale : a.Scale * VectorMath.Log2E;
        TensorPrimitives.Multiply(new ReadOnlySpan<float>(query, rows * d), scale, new Span<float>(q, rows * d));
        new Span<float>(q + (rows * d), (paddedRows - rows) * d).Clear();
        for (int r = 0; r < paddedRows; r++)
        {
            scratch.Max[r] = float.NegativeInfinity;
            scratch.Sum[r] = 0f;
        }

        NativeMemory.Clear(o, (nuint)(paddedRows * paddedValueDim * sizeof(float)));

        // Which keys row r of the tile sees (causal bottom-right aligned, window, sinks): see Visibility. Key tiles that no row
        // sees are never visited: with a window, the keys run in up to two ranges, the sinks and the band from the first row's
        // window start (rounded down to a whole panel) to the last row's causal limit.
        var seen = new Visibility(in a, i0, rows);
        long keyEnd = Math.Clamp(seen.LastKey(rows - 1) + 1, 0, a.KeyCount);
        long bandStart = Math.Clamp(seen.FirstKey(0), 0, keyEnd) / KeyAlign * KeyAlign;
        long sinkEnd = Math.Min(seen.Sinks, keyEnd);
        if (sinkEnd >= bandStart)
        {
            bandStart = 0;
            sinkEnd = 0;
        }

        for (int range = 0; range < 2; range++)
        {
            (int start, int end) = range == 0 ? (0, (int)sinkEnd) : ((int)bandStart, (int)keyEnd);
            for (int j0 = start; j0 < end; j0 += KeyTile)
            {
                int cols = Math.Min(KeyTile, end - j0);
                ProcessKeyTile(in a, b, h, i0, rows, paddedRows, j0, cols, keys, values, paddedValueDim, in seen, scratch);
            }
        }

        // 5. Normalise. l = 0 only when the row saw no visible key: it outputs zeros. A NaN l (non-finite
        // inputs let through) must stay NaN, hence != rather than >.
        if (a.RowStats != null)
        {
            float* stats = a.RowStats + (2 * ((bh * a.QueryCount) + i0));
            for (int r = 0; r < rows; r++)
            {
                stats[2 * r] = scratch.Max[r]; // base 2, as computed: converting it would round it
                stats[(2 * r) + 1] = scratch.Sum[r];
            }
        }

        for (int r = 0; r < rows; r++)
        {
            float l = scratch.Sum[r];
            var destination = new Span<float>(output + (r * a.ValueDim), a.ValueDim);
            if (l != 0f)
            {
                TensorPrimitives.Divide(new ReadOnlySpan<float>(o + (r * paddedValueDim), a.ValueDim), l, destination); // NaN l propagates
            }
            else
            {
                destination.Clear();
            }
        }
    }

    /// <summary>Steps 1-4 on keys j0 .. j0 + cols: the tile's scores, masks, online softmax and P V into the scratch's O.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ProcessKeyTile(in AttentionArgs a, int b, int h, int i0, int rows, int paddedRows, int j0, int cols, float* keys, float* values,
        int paddedValueDim, in Visibility seen, Scratch scratch)
    {
        int d = a.HeadDim;
        float* q = scratch.Query;
        float* s = scratch.Scores;
        float* o = scratch.Output;
        int paddedCols = RoundUp(cols, KeyAlign);

        // How step 4 splits the value columns: four-vector groups, then a pair, then single vectors.
        int wide = paddedValueDim / Strip * Strip;
        int pair = Strip > 2 * Width && paddedValueDim - wide >= 2 * Width ? 2 * Width : 0;

        // 1. Scores, panel by panel: each key panel (strip x d floats) stays in L1 while every
        //    row block of the query tile is multiplied against it. A row block that sees no key of a panel
        //    skips it: step 2 writes those scores as -inf.
        for (int c = 0; c < paddedCols; c += Strip)
        {
            float* panel = keys + ((long)(j0 + c) * d);
            for (int r = 0; r < paddedRows; r += Rows)
            {
                if (seen.Any(r, Rows, j0 + c, j0 + c + Strip))
                {
                    MicroKernel<TS, TV>.RunStrip(d, q + (r * d), d, 1, panel, Strip, s + (r * ScoreStride) + c, ScoreStride, null);
                }
            }
        }

        // 2. Score transform and masking.
        ApplyMasks(in a, b, h, i0, rows, paddedRows, j0, cols, paddedCols, in seen, s);

        // 3. Online softmax; row r's rescale factor goes to Alpha[r].
        for (int r = 0; r < paddedRows; r++)
        {
            SoftmaxRow(s + (r * ScoreStride), paddedCols, ref scratch.Max[r], ref scratch.Sum[r], out scratch.Alpha[r]);
        }

        // 4. O = alpha O + P V, in chunks of keys so each chunk of V stays in L1 while every row
        //    block uses it. A row block skips the chunks whose keys it does not see (their weights are 0); alpha
        //    rescales its O on the first chunk it does not skip. A row that sees no key of the tile has alpha = 1
        //    (its max is unchanged), so a block that skips them all needs no rescale.
        //    Value columns go a strip (four vectors, or two on AVX2) at a time in 6-row tiles; with 512-bit vectors a
        //    remaining pair (dv = 32) in 8-row tiles, as RunNarrow's 4 FMAs per 5 loads would starve the FMA pipes;
        //    a last single vector in RunNarrow.
        for (int k0 = 0; k0 < cols; k0 += ValueChunk)
        {
            int chunk = Math.Min(ValueChunk, cols - k0);
            int k1 = j0 + k0 + chunk;
            float* v = values + ((long)(j0 + k0) * paddedValueDim);
            for (int c = 0; c < wide; c += Strip)
            {
                for (int r = 0; r < paddedRows; r += Rows)
                {
                    if (seen.Any(r, Rows, j0 + k0, k1))
                    {
                        float* alpha = k0 == 0 || !seen.Any(r, Rows, j0, j0 + k0) ? scratch.Alpha : scratch.Ones;
                        MicroKernel<TS, TV>.RunStrip(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + c, paddedValueDim, o + (r * paddedValueDim) + c, paddedValueDim, alpha + r);
                    }
                }
            }

            const int two = MicroKernel<TS, TV>.TwoRows;
            for (int r = 0; pair > 0 && r < paddedRows; r += two)
            {
                if (seen.Any(r, two, j0 + k0, k1))
                {
                    float* alpha = k0 == 0 || !seen.Any(r, two, j0, j0 + k0) ? scratch.Alpha : scratch.Ones;
                    MicroKernel<TS, TV>.RunTwo(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + wide, paddedValueDim, o + (r * paddedValueDim) + wide, paddedValueDim, alpha + r);
                }
            }

            const int narrow = MicroKernel<TS, TV>.Rows;
            for (int c = wide + pair; c < paddedValueDim; c += Width)
            {
                for (int r = 0; r < paddedRows; r += narrow)
                {
                    if (seen.Any(r, narrow, j0 + k0, k1))
                    {
                        float* alpha = k0 == 0 || !seen.Any(r, narrow, j0, j0 + k0) ? scratch.Alpha : scratch.Ones;
                        MicroKernel<TS, TV>.RunNarrow(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + c, paddedValueDim, o + (r * paddedValueDim) + c, paddedValueDim, alpha + r);
                    }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ApplyMasks(in AttentionArgs a, int b, int h, int i0, int rows, int paddedRows, int j0, int cols, int paddedCols, in Visibility seen, float* s)
    {
        if (a.Power > 0f)
        {
            // Power attention in the log domain (see AttentionArgs.PowerScore).
            for (int r = 0; r < rows; r++)
            {
                float* row = s + (r * ScoreStride);
                for (int c = 0; c < cols; c++)
                {
                    row[c] = a.PowerScore(row[c]) * VectorMath.Log2E;
                }
            }
        }

        if (a.Bias != null)
        {
            float* bias = a.Bias + (b * a.BiasBatchStride) + (h * a.BiasHeadStride) + ((long)i0 * a.KeyCount) + j0;
            for (int r = 0; r < rows; r++)
            {
                float* row = s + (r * ScoreStride);
                float* add = bias + ((long)r * a.KeyCount);
                for (int c = 0; c < cols; c++)
                {
                    row[c] = MathF.FusedMultiplyAdd(add[c], VectorMath.Log2E, row[c]);
                }
            }
        }

        if (a.Mask != null)
        {
            bool* mask = a.Mask + (b * a.MaskBatchStride) + (h * a.MaskHeadStride) + ((long)i0 * a.KeyCount) + j0;
            for (int r = 0; r < rows; r++)
            {
                float* row = s + (r * ScoreStride);
                bool* keep = mask + ((long)r * a.KeyCount);
                for (int c = 0; c < cols; c++)
                {
                    if (!keep[c])
                    {
                        row[c] = float.NegativeInfinity;
                    }
                }
            }
        }

        for (int r = 0; r < paddedRows; r++)
        {
            // Keys past this row's causal limit and the zero keys that pad the last panel; keys before its window
            // that are not sinks. Padded rows are masked too: step 1 skipped exactly the micro-tiles masked here.
            int visible = (int)Math.Clamp(seen.LastKey(r) + 1 - j0, 0, cols);
            float* row = s + (r * ScoreStride);
            for (int c = visible; c < paddedCols; c++)
            {
                row[c] = float.NegativeInfinity;
            }

            int hiddenEnd = (int)Math.Clamp(seen.FirstKey(r) - j0, 0, visible);
            for (int c = (int)Math.Clamp(seen.Sinks - j0, 0, hiddenEnd); c < hiddenEnd; c++)
            {
                row[c] = float.NegativeInfinity;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void SoftmaxRow(float* s, int paddedCols, ref float max, ref float sum, out float alpha)
    {
        // Four independent chains in both passes (paddedCols is a multiple of four vectors): one chain of
        // dependent max or add instructions would make each pass wait on their latency, not their throughput.
        int w = Width;
        TV m0 = TS.Broadcast(float.NegativeInfinity), m1 = m0, m2 = m0, m3 = m0;
        for (int c = 0; c < paddedCols; c += 4 * w)
        {
            m0 = TS.Max(m0, TS.Load(ref s[c]));
            m1 = TS.Max(m1, TS.Load(ref s[c + w]));
            m2 = TS.Max(m2, TS.Load(ref s[c + (2 * w)]));
            m3 = TS.Max(m3, TS.Load(ref s[c + (3 * w)]));
        }

        float newMax = MathF.Max(max, TS.MaxAcross(TS.Max(TS.Max(m0, m1), TS.Max(m2, m3))));
        if (float.IsNegativeInfinity(newMax))
        {
            // Nothing visible yet: P = 0, state unchanged. The hardware max drops NaN, so a row of
            // NaN scores (non-finite inputs let through) also lands here: poison its sum instead.
            if (new ReadOnlySpan<float>(s, paddedCols).ContainsAnyExceptInRange(float.NegativeInfinity, float.PositiveInfinity))
            {
                sum = float.NaN;
            }

            NativeMemory.Clear(s, (nuint)(paddedCols * sizeof(float)));
            alpha = 1f;
            return;
        }

        alpha = VectorMath.Exp2NonPositive<SimdScalar, float>(max - newMax);
        TV shift = TS.Broadcast(newMax);
        TV t0 = TS.Broadcast(0f), t1 = t0, t2 = t0, t3 = t0;
        for (int c = 0; c < paddedCols; c += 4 * w)
        {
            TV p0 = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Load(ref s[c]), shift));
            TV p1 = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Load(ref s[c + w]), shift));
            TV p2 = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Load(ref s[c + (2 * w)]), shift));
            TV p3 = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Load(ref s[c + (3 * w)]), shift));
            TS.Store(p0, ref s[c]);
            TS.Store(p1, ref s[c + w]);
            TS.Store(p2, ref s[c + (2 * w)]);
            TS.Store(p3, ref s[c + (3 * w)]);
            t0 = TS.Add(t0, p0);
            t1 = TS.Add(t1, p1);
            t2 = TS.Add(t2, p2);
            t3 = TS.Add(t3, p3);
        }

        sum = (sum * alpha) + TS.SumAcross(TS.Add(TS.Add(t0, t1), TS.Add(t2, t3)));
        max = newMax;
    }

    /// <summary>
    /// Keys j0 .. j1 (a multiple of the strip) of group g of K (nk rows of d) into panels of <c>strip</c> keys, each [d][strip], widened
    /// to float32; missing keys are zero. Float32 rows are read in place (contiguous or in pages); other types are widened a row at a
    /// time into a buffer first, so the widening runs in whole vectors.
    /// </summary>
    internal static void PackKeys<TE>(in KvOperand key, long g, float* packed, int j0, int j1)
        where TE : struct, IKvElement
    {
        int strip = Strip, d = key.RowLength;
        using NativeBufferPool.Buffer buffer = NativeBufferPool.Rent(TE.Type == KvElementType.Float32 ? 0 : d);
        for (int p0 = j0; p0 < j1; p0 += strip)
        {
            float* panel = packed + ((long)p0 * d);
            for (int c = 0; c < strip; c++)
            {
                int j = p0 + c;
                if (j >= key.Rows)
                {
                    for (int t = 0; t < d; t++)
                    {
                        panel[(t * strip) + c] = 0f;
                    }

                    continue;
                }

                float* row = TE.Type == KvElementType.Float32 ? (float*)key.Row(g, j) : Widen<TE>(in key, g, j, buffer.Pointer);
                for (int t = 0; t < d; t++)
                {
                    panel[(t * strip) + c] = row[t];
                }
            }
        }
    }

    /// <summary>Keys j0 .. j1 of group g of V (nk rows of dv) into rows of paddedValueDim floats, widened and zero-padded
    /// (0 * padding must stay 0, never NaN).</summary>
    private static void PackValues<TE>(in KvOperand value, long g, float* packed, int paddedValueDim, int j0, int j1)
        where TE : struct, IKvElement
    {
        int dv = value.RowLength;
        NativeMemory.Clear(packed + ((long)j0 * paddedValueDim), (nuint)((long)(j1 - j0) * paddedValueDim * sizeof(float)));
        for (int j = j0; j < Math.Min(j1, value.Rows); j++)
        {
            float* destination = packed + ((long)j * paddedValueDim);
            if (TE.Type == KvElementType.Float32)
            {
                new ReadOnlySpan<float>(value.Row(g, j), dv).CopyTo(new Span<float>(destination, dv));
            }
            else
            {
                Widen<TE>(in value, g, j, destination);
            }
        }
    }

    /// <summary>Row j of group g widened into <paramref name="destination"/> (a row of floats), returned. The type is a constant
    /// in each instantiation, so the loads fold to that type's conversion; whole vectors, then a scalar tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float* Widen<TE>(in KvOperand operand, long g, int j, float* destination)
        where TE : struct, IKvElement
    {
        byte* row = operand.Row(g, j);
        Half* scales = operand.RowScales(g, j);
        int length = operand.RowLength, w = Width, t = 0;
        for (; t + w <= length; t += w)
        {
            TS.Store(KvWiden.Load<TV>(TE.Type, row, scales, t), ref destination[t]);
        }

        for (; t < length; t++)
        {
            destination[t] = KvWiden.Scalar(TE.Type, row, scales, t);
        }

        return destination;
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// <summary>
    /// The keys row r of a query tile sees, from AttentionArgs' rule at position p = i0 + r + nk - nq: the keys
    /// <see cref="FirstKey"/>(r) .. <see cref="LastKey"/>(r) (the window's start and the causal limit; unbounded when absent), and
    /// the first <see cref="Sinks"/> keys up to the causal limit. Both bounds grow with r, so a block of rows sees a key range iff
    /// its last row's causal limit reaches the range and its first row's window (or the sinks) does too.
    /// </summary>
    internal readonly struct Visibility
    {
        /// <summary>Far enough past any key index for the sums below not to overflow.</summary>
        private const long Unbounded = 1L << 40;

        private readonly long _first;
        private readonly long _last;

        public Visibility(in AttentionArgs a, int i0, int rows)
        {
            long p0 = i0 + ((long)a.KeyCount - a.QueryCount);
            _first = a.Window > 0 ? p0 - a.Window + 1 : -Unbounded;
            _last = a.Causal ? p0 : Unbounded;
            Sinks = a.Window > 0 ? a.Sinks : 0;
        }

        /// <summary>Keys below this are seen by every row (0 without a window).</summary>
        public long Sinks { get; }

        /// <summary>The first key of row r's window (very negative without one).</summary>
        public long FirstKey(int r) => _first + r;

        /// <summary>Row r's last visible key (very large when not causal).</summary>
        public long LastKey(int r) => _last + r;

        /// <summary>Whether any of rows r .. r + step sees any of keys j0 .. j1 (j1 &gt; j0).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Any(int r, int step, long j0, long j1) => j0 <= LastKey(r + step - 1) && (j0 < Sinks || j1 > FirstKey(r));
    }

    /// <summary>One worker's tile buffers, carved 64-byte aligned out of one pooled buffer, reused across its work items.</summary>
    private sealed class Scratch : IDisposable
    {
        private readonly NativeBufferPool.Buffer _buffer;

        public Scratch(int d, int paddedValueDim)
        {
            long query = RoundUp(QueryTile * d, 16), scores = (long)QueryTile * ScoreStride, output = (long)QueryTile * paddedValueDim;
            _buffer = NativeBufferPool.Rent(query + scores + output + (2 * QueryTile));
            Query = _buffer.Pointer;
            Scores = Query + query;
            Output = Scores + scores;
            Alpha = Output + output;
            Ones = Alpha + QueryTile;
            new Span<float>(Ones, QueryTile).Fill(1f);
            Max = new float[QueryTile];
            Sum = new float[QueryTile];
        }

        /// <summary>Query tile times the scale, [QueryTile, d].</summary>
        public float* Query { get; }

        /// <summary>Scores, then weights P, [QueryTile, ScoreStride].</summary>
        public float* Scores { get; }

        /// <summary>Unnormalised output O, [QueryTile, paddedValueDim].</summary>
        public float* Output { get; }

        /// <summary>Per-row rescale factors of the current key tile.</summary>
        public float* Alpha { get; }

        /// <summary>Rescale factors of 1, for the P V chunks after the first.</summary>
        public float* Ones { get; }

        /// <summary>Running row max m.</summary>
        public float[] Max { get; }

        /// <summary>Running row sum l.</summary>
        public float[] Sum { get; }

        public void Dispose() => _buffer.Dispose();
    }
}
