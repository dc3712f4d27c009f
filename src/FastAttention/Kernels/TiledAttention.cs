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
/// <item>bias, mask, causal limit and key padding applied to S (masked scores become -inf);</item>
/// <item>per row: m' = max(m, rowmax S), alpha = 2^(m - m'), P = 2^(S - m'), l = alpha l + sum P (S carries a factor log2 e, so 2^S = e^(s q.k));</item>
/// <item>O = alpha O + P V_tile by the same micro-kernel, accumulating each chunk from zero (blocked summation);</item>
/// <item>after the last key tile, out = O / l (a row that saw no key outputs zeros).</item>
/// </list>
/// Work items never share state, so the output bits do not depend on the thread count.
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
    private const int QueryTile = 120;

    /// <summary>Keys per tile: S (120 x 528 floats, 253 KiB) stays in L2; the per-row softmax bookkeeping is amortised over 32 vectors.</summary>
    private const int KeyTile = 512;

    /// <summary>Row stride of the score tile: one cache line more than <see cref="KeyTile"/>, so the rows of a
    /// micro-tile do not alias in the L1 cache (4 KiB aliasing) or in store-to-load forwarding.</summary>
    private const int ScoreStride = KeyTile + 16;

    /// <summary>Keys per P V chunk: 128 rows of V (32 KiB at dv = 64) stay in L1 across the row blocks; O is read and written once per chunk.</summary>
    private const int ValueChunk = 128;

    /// <summary>Query rows per micro-tile of both products (6 rows x 4 vectors = 24 independent FMA chains).</summary>
    private const int Rows = MicroKernel<TS, TV>.TallRows;

    /// <summary>Padded rows are a multiple of this (6-row, 8-row and 4-row tiles all divide it; so does <see cref="QueryTile"/>).</summary>
    private const int RowAlign = 24;

    private static int Width => TS.Count;

    /// <summary>Keys per score micro-tile (and value columns per P V micro-tile): four vectors where there are 32 vector registers
    /// (512-bit), two on 16-register machines (AVX2), where a 6 x 4-vector tile's 24 accumulators spill (measured: the 6 x 2 form
    /// ran the same products about twice as fast per flop on a Zen 3). The per-element summation order is the same either way.</summary>
    private static int Strip => MicroKernel<TS, TV>.StripColumns;

    /// <summary>Keys are padded to a multiple of four vectors whatever the strip: the softmax passes run four chains.</summary>
    private static int KeyAlign => 4 * TS.Count;

    public static void Run(AttentionArgs a)
    {
        int paddedKeys = RoundUp(a.KeyCount, KeyAlign);
        int paddedValueDim = RoundUp(a.ValueDim, Width);
        int groups = a.Batch * a.KvHeads;
        long keyPanelSize = (long)paddedKeys * a.HeadDim;

        // V is read in place when its rows are whole vectors (the P V product reads only real keys, never the
        // padding of the last key panel); otherwise it is copied into zero-padded rows.
        bool copyValues = paddedValueDim != a.ValueDim;
        long valueBlockSize = copyValues ? (long)paddedKeys * paddedValueDim : (long)a.KeyCount * a.ValueDim;

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
            // K into [nk/strip][d][strip] panels, V (if copied) into [nk][dv rounded up to a vector].
            // One thread (the tensor engine's small calls) packs inline: a parallel region costs more than a small pack.
            ForEach(passGroups * packChunks, options, item =>
            {
                int slot = item / packChunks, g = g0 + slot;
                int j0 = item % packChunks * PackChunk, j1 = Math.Min(paddedKeys, j0 + PackChunk);
                PackKeys(a.Key + ((long)g * a.KeyCount * a.HeadDim), a.KeyCount, a.HeadDim, keys + (slot * keyPanelSize), j0, j1);
                if (copyValues)
                {
                    PackValues(a.Value + ((long)g * a.KeyCount * a.ValueDim), a.KeyCount, a.ValueDim, copied + (slot * valueBlockSize), paddedValueDim, j0, j1);
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
                float* values = copyValues ? copied + (slot * valueBlockSize) : a.Value + ((g0 + slot) * valueBlockSize);
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
        float* s = scratch.Scores;
        float* o = scratch.Output;

        // The scale is folded into the query tile once (times log2 e: the softmax works in base 2, see
        // VectorMath.Exp2NonPositive; power scores get the factor after their transform); padded rows are zero.
        float scale = a.Power > 0f ? a.Scale : a.Scale * VectorMath.Log2E;
        for (int r = 0; r < paddedRows; r++)
        {
            for (int t = 0; t < d; t++)
            {
                q[(r * d) + t] = r < rows ? query[(r * d) + t] * scale : 0f;
            }

            scratch.Max[r] = float.NegativeInfinity;
            scratch.Sum[r] = 0f;
        }

        NativeMemory.Clear(o, (nuint)(paddedRows * paddedValueDim * sizeof(float)));

        // How step 4 splits the value columns: four-vector groups, then a pair, then single vectors.
        int wide = paddedValueDim / Strip * Strip;
        int pair = Strip > 2 * Width && paddedValueDim - wide >= 2 * Width ? 2 * Width : 0;

        // Causal, bottom-right aligned: query i sees keys j <= i + (nk - nq). Key tiles past the
        // last row's limit are skipped entirely.
        long causalOffset = (long)a.KeyCount - a.QueryCount;
        int keyEnd = a.Causal ? (int)Math.Clamp(i0 + rows + causalOffset, 0, a.KeyCount) : a.KeyCount;

        for (int j0 = 0; j0 < keyEnd; j0 += KeyTile)
        {
            int cols = Math.Min(KeyTile, keyEnd - j0);
            int paddedCols = RoundUp(cols, KeyAlign);

            // Causal: the last key of this tile that row r sees (relative to j0). A micro-tile whose first key lies
            // past its last row's limit is all masked and is skipped by both products: step 2 writes its scores
            // as -inf, and its weights are 0 (its rows' rescale factors are 1 unless a key of this tile, hence
            // key j0 and the first chunk, is visible to them).
            long lastVisible = a.Causal ? i0 + causalOffset - j0 : long.MaxValue - QueryTile;

            // 1. Scores, panel by panel: each key panel (strip x d floats) stays in L1 while every
            //    row block of the query tile is multiplied against it.
            for (int c = 0; c < paddedCols; c += Strip)
            {
                float* panel = keys + ((long)(j0 + c) * d);
                for (int r = FirstUnmasked(c, lastVisible, Rows); r < paddedRows; r += Rows)
                {
                    MicroKernel<TS, TV>.RunStrip(d, q + (r * d), d, 1, panel, Strip, s + (r * ScoreStride) + c, ScoreStride, null);
                }
            }

            // 2. Score transform and masking.
            ApplyMasks(in a, b, h, i0, rows, paddedRows, j0, cols, paddedCols, causalOffset, s);

            // 3. Online softmax; row r's rescale factor goes to Alpha[r].
            for (int r = 0; r < paddedRows; r++)
            {
                SoftmaxRow(s + (r * ScoreStride), paddedCols, ref scratch.Max[r], ref scratch.Sum[r], out scratch.Alpha[r]);
            }

            // 4. O = alpha O + P V, in chunks of keys so each chunk of V stays in L1 while every row
            //    block uses it; alpha rescales O on the first chunk only.
            //    Value columns go a strip (four vectors, or two on AVX2) at a time in 6-row tiles; with 512-bit vectors a
            //    remaining pair (dv = 32) in 8-row tiles, as RunNarrow's 4 FMAs per 5 loads would starve the FMA pipes;
            //    a last single vector in RunNarrow.
            for (int k0 = 0; k0 < cols; k0 += ValueChunk)
            {
                int chunk = Math.Min(ValueChunk, cols - k0);
                float* v = values + ((long)(j0 + k0) * paddedValueDim);
                float* alpha = k0 == 0 ? scratch.Alpha : scratch.Ones;
                for (int c = 0; c < wide; c += Strip)
                {
                    for (int r = FirstUnmasked(k0, lastVisible, Rows); r < paddedRows; r += Rows)
                    {
                        MicroKernel<TS, TV>.RunStrip(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + c, paddedValueDim, o + (r * paddedValueDim) + c, paddedValueDim, alpha + r);
                    }
                }

                for (int r = FirstUnmasked(k0, lastVisible, MicroKernel<TS, TV>.TwoRows); pair > 0 && r < paddedRows; r += MicroKernel<TS, TV>.TwoRows)
                {
                    MicroKernel<TS, TV>.RunTwo(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + wide, paddedValueDim, o + (r * paddedValueDim) + wide, paddedValueDim, alpha + r);
                }

                for (int c = wide + pair; c < paddedValueDim; c += Width)
                {
                    for (int r = FirstUnmasked(k0, lastVisible, MicroKernel<TS, TV>.Rows); r < paddedRows; r += MicroKernel<TS, TV>.Rows)
                    {
                        MicroKernel<TS, TV>.RunNarrow(chunk, s + (r * ScoreStride) + k0, ScoreStride, 1, v + c, paddedValueDim, o + (r * paddedValueDim) + c, paddedValueDim, alpha + r);
                    }
                }
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
            float* row = o + (r * paddedValueDim);
            for (int c = 0; c < a.ValueDim; c++)
            {
                output[(r * a.ValueDim) + c] = l != 0f ? row[c] / l : 0f; // NaN l propagates
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ApplyMasks(in AttentionArgs a, int b, int h, int i0, int rows, int paddedRows, int j0, int cols, int paddedCols, long causalOffset, float* s)
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
            // Keys past this row's causal limit and the zero keys that pad the last panel.
            int visible = cols;
            if (a.Causal)
            {
                visible = (int)Math.Clamp(i0 + r + causalOffset + 1 - j0, 0, cols);
            }

            float* row = s + (r * ScoreStride);
            for (int c = visible; c < paddedCols; c++)
            {
                row[c] = float.NegativeInfinity;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SoftmaxRow(float* s, int paddedCols, ref float max, ref float sum, out float alpha)
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

    /// <summary>Keys j0 .. j1 (a multiple of the strip) of K [nk, d] into panels of <c>strip</c> keys, each [d][strip]; missing keys are zero.</summary>
    private static void PackKeys(float* key, int keyCount, int d, float* packed, int j0, int j1)
    {
        int strip = Strip;
        for (int p0 = j0; p0 < j1; p0 += strip)
        {
            float* panel = packed + ((long)p0 * d);
            for (int c = 0; c < strip; c++)
            {
                int j = p0 + c;
                float* row = key + ((long)j * d);
                for (int t = 0; t < d; t++)
                {
                    panel[(t * strip) + c] = j < keyCount ? row[t] : 0f;
                }
            }
        }
    }

    /// <summary>Keys j0 .. j1 of V [nk, dv] into rows of paddedValueDim, zero-padded (0 * padding must stay 0, never NaN).</summary>
    private static void PackValues(float* value, int keyCount, int dv, float* packed, int paddedValueDim, int j0, int j1)
    {
        NativeMemory.Clear(packed + ((long)j0 * paddedValueDim), (nuint)((long)(j1 - j0) * paddedValueDim * sizeof(float)));
        for (int j = j0; j < Math.Min(j1, keyCount); j++)
        {
            new ReadOnlySpan<float>(value + ((long)j * dv), dv).CopyTo(new Span<float>(packed + ((long)j * paddedValueDim), dv));
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// <summary>
    /// The first block of <paramref name="step"/> rows (a multiple of it) that sees key <paramref name="firstKey"/> or a
    /// later one of its micro-tile, when row r's last visible key is <paramref name="lastVisible"/> + r: the blocks above
    /// are all masked. 0 when nothing is masked.
    /// </summary>
    private static int FirstUnmasked(int firstKey, long lastVisible, int step)
    {
        long rows = firstKey - lastVisible - (step - 1); // the block starting at r is needed when r >= rows
        return rows <= 0 ? 0 : (int)Math.Min(QueryTile, (rows + step - 1) / step * step);
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
