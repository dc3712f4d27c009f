using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FastAttention.Kernels;

/// <summary>What the backward kernels need beyond the forward's arguments, already validated.</summary>
internal unsafe struct BackwardArgs
{
    /// <summary>Inputs, dimensions and options, as the forward kernel sees them (<see cref="AttentionArgs.Output"/> is the forward's output O).</summary>
    public AttentionArgs Forward;

    /// <summary>dO, <c>[batch, heads, nq, dv]</c>.</summary>
    public float* OutputGradient;

    /// <summary>The forward's log-sum-exp per row in base e, <c>[batch, heads, nq]</c> (-inf: the row saw no key).</summary>
    public float* LogSumExp;

    /// <summary>dQ, <c>[batch, heads, nq, d]</c>.</summary>
    public float* QueryGradient;

    /// <summary>dK, <c>[batch, kvHeads, nk, d]</c>.</summary>
    public float* KeyGradient;

    /// <summary>dV, <c>[batch, kvHeads, nk, dv]</c>.</summary>
    public float* ValueGradient;

    /// <summary>When not null, receives dS (the gradient of the base-e scores) for every (b, h, i, j), <c>[batch, heads, nq, nk]</c>.</summary>
    public float* ScoreGradient;
}

/// <summary>
/// The exact softmax (and power) attention backward, FlashAttention-2's algorithm (docs/algorithms.md §6), written once over
/// a vector width. Never forms an <c>nq x nk</c> matrix; extra memory is O(n d) per work item.
/// <list type="number">
/// <item>Pre-pass, parallel over rows: zero-padded copies of Q and dO, <c>D_i = dO_i . O_i</c>, and <c>L_i</c>
/// (+inf for a row that saw no key, so its weights recompute as 0).</item>
/// <item>Main pass, parallel over (batch, kv head, key block): each item owns a fixed block of keys and walks, tile by tile, every
/// query tile of every query head of its group that sees them (causal: the masked tiles are skipped), recomputing
/// <c>S = Q K^T</c>, <c>P = exp(s S - L)</c>, <c>dP = dO V^T</c>, <c>dS = P o (dP - D)</c>, and accumulating
/// <c>dV += P^T dO</c>, <c>dK += dS^T Q</c> in its own buffers and <c>dQ += dS K</c> into its key block's dQ partial.</item>
/// <item>Reduction, parallel over rows: <c>dQ = s sum</c> of the partials, in block order.</item>
/// </list>
/// The key blocks depend on the shape only (never on the thread count) and no two items write the same memory, so the
/// gradients' bits are the same for every thread count, without atomics: the "per-tile dQ partials reduced in a fixed order"
/// tiling, with a fixed, small number of partials per head.
/// </summary>
internal static unsafe class TiledAttentionBackward<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>Query rows per tile: a multiple of the micro-kernel's 6 rows.</summary>
    private const int QueryTile = 48;

    /// <summary>Keys per tile: a multiple of 6 (dK and dV tiles are 6-row tiles of keys) and of every panel width.</summary>
    private const int KeyTile = 192;

    /// <summary>Row stride of the score tiles: a cache line more than <see cref="KeyTile"/>, so the rows of a micro-tile do not alias in L1.</summary>
    private const int ScoreStride = KeyTile + 16;

    /// <summary>Work items aimed at: few (batch, kv head) pairs split their keys into blocks until there are this many.</summary>
    private const int TargetItems = 16;

    /// <summary>At most this many key blocks (dQ partials) per head: the partials cost <c>blocks nq d</c> floats.</summary>
    private const int MaxKeyBlocks = 8;

    /// <summary>Floats the dQ partials may take together (128 MiB): many query heads over few kv heads get fewer blocks, down to one.</summary>
    private const long PartialBudgetFloats = 32L << 20;

    private const int Rows = MicroKernel<TS, TV>.TallRows;

    /// <summary>Columns per micro-tile: four vectors where there are 32 registers (512-bit), else two (AVX2 has 16).</summary>
    private static int Panel => MicroKernel<TS, TV>.StripColumns;

    public static void Run(BackwardArgs g)
    {
        AttentionArgs a = g.Forward;
        int nq = a.QueryCount, nk = a.KeyCount, d = a.HeadDim, dv = a.ValueDim;
        int dp = RoundUp(d, Panel), dvp = RoundUp(dv, Panel), paddedQueries = RoundUp(nq, QueryTile);
        int heads = a.Batch * a.Heads, groups = a.Batch * a.KvHeads;
        int keyTiles = (nk + KeyTile - 1) / KeyTile;
        int blocks = Math.Clamp((TargetItems + groups - 1) / groups, 1, Math.Min(MaxKeyBlocks, keyTiles));
        long queryPlane = (long)paddedQueries * dp, gradientPlane = (long)paddedQueries * dvp;
        blocks = (int)Math.Clamp(PartialBudgetFloats / (heads * queryPlane), 1, blocks); // from the shape alone, so the bits stay thread-count free
        int tilesPerBlock = (keyTiles + blocks - 1) / blocks;
        blocks = (keyTiles + tilesPerBlock - 1) / tilesPerBlock;

        using NativeBufferPool.Buffer queries = NativeBufferPool.Rent(heads * queryPlane);
        using NativeBufferPool.Buffer gradients = NativeBufferPool.Rent(heads * gradientPlane);
        using NativeBufferPool.Buffer rowTerms = NativeBufferPool.Rent(2L * heads * paddedQueries);
        using NativeBufferPool.Buffer partials = NativeBufferPool.Rent(blocks * heads * queryPlane);
        float* qp = queries.Pointer, gp = gradients.Pointer, deltas = rowTerms.Pointer, limits = deltas + ((long)heads * paddedQueries), part = partials.Pointer;
        NativeMemory.Clear(part, (nuint)(blocks * heads * queryPlane * sizeof(float)));

        // 1. Pre-pass: padded Q and dO, D, L.
        int chunks = (paddedQueries + QueryTile - 1) / QueryTile;
        Parallel.For(0, heads * chunks, Options(a), item =>
        {
            int bh = item / chunks, i0 = item % chunks * QueryTile;
            for (int i = i0; i < i0 + QueryTile; i++)
            {
                long row = ((long)bh * nq) + i;
                float* q = qp + (bh * queryPlane) + ((long)i * dp), o = gp + (bh * gradientPlane) + ((long)i * dvp);
                NativeMemory.Clear(q, (nuint)(dp * sizeof(float)));
                NativeMemory.Clear(o, (nuint)(dvp * sizeof(float)));
                long at = ((long)bh * paddedQueries) + i;
                if (i >= nq)
                {
                    deltas[at] = 0f;
                    limits[at] = float.PositiveInfinity;
                    continue;
                }

                new ReadOnlySpan<float>(a.Query + (row * d), d).CopyTo(new Span<float>(q, d));
                new ReadOnlySpan<float>(g.OutputGradient + (row * dv), dv).CopyTo(new Span<float>(o, dv));
                double delta = 0;
                for (int c = 0; c < dv; c++)
                {
                    delta += (double)g.OutputGradient[(row * dv) + c] * a.Output[(row * dv) + c];
                }

                float lse = g.LogSumExp[row];
                deltas[at] = (float)delta;
                limits[at] = float.IsNegativeInfinity(lse) ? float.PositiveInfinity : lse;
            }
        });

        // 2. Main pass. Causal items go heaviest first (block 0 is seen by every query); the order changes no bits.
        var layout = new Layout(dp, dvp, paddedQueries, queryPlane, gradientPlane, qp, gp, deltas, limits);
        ParallelWork.Run(groups * blocks, a.MaxDegreeOfParallelism, () => new Scratch(d, dv, dp, dvp), (item, scratch) =>
        {
            int block = item / groups, group = item % groups;
            int firstTile = block * tilesPerBlock, lastTile = Math.Min(keyTiles, firstTile + tilesPerBlock);
            for (int tile = firstTile; tile < lastTile; tile++)
            {
                KeyTileBackward(in g, in layout, group, tile * KeyTile, part + ((long)block * heads * queryPlane), scratch);
            }
        });

        // 3. dQ = s (partial 0 + partial 1 + ...), in block order.
        float scale = a.Scale;
        Parallel.For(0, heads * chunks, Options(a), item =>
        {
            int bh = item / chunks, i0 = item % chunks * QueryTile;
            for (int i = i0; i < Math.Min(nq, i0 + QueryTile); i++)
            {
                float* dq = g.QueryGradient + ((((long)bh * nq) + i) * d);
                for (int t = 0; t < d; t++)
                {
                    float sum = 0f;
                    for (int p = 0; p < blocks; p++)
                    {
                        sum += part[(((long)p * heads) + bh) * queryPlane + ((long)i * dp) + t];
                    }

                    dq[t] = scale * sum;
                }
            }
        });
    }

    /// <summary>One key tile of one (batch, kv head): dK and dV of its keys, and its share of dQ into <paramref name="partial"/> ([heads][paddedQueries][dp]).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KeyTileBackward(in BackwardArgs g, in Layout l, int group, int j0, float* partial, Scratch scratch)
    {
        ref readonly AttentionArgs a = ref g.Forward;
        int nq = a.QueryCount, nk = a.KeyCount, d = a.HeadDim, dv = a.ValueDim, dp = l.Dp, dvp = l.Dvp, panel = Panel;
        int cols = Math.Min(KeyTile, nk - j0), keyRows = RoundUp(cols, Rows);
        int b = group / a.KvHeads, kvHead = group % a.KvHeads;
        float* key = a.Key + ((((long)group * nk) + j0) * d), value = a.Value + ((((long)group * nk) + j0) * dv);
        Pack(key, cols, d, panel, scratch.KeyPanels);
        Pack(value, cols, dv, panel, scratch.ValuePanels);
        for (int c = 0; c < KeyTile; c++)
        {
            Span<float> row = new(scratch.KeyRows + ((long)c * dp), dp);
            row.Clear();
            if (c < cols)
            {
                new ReadOnlySpan<float>(key + ((long)c * d), d).CopyTo(row);
            }
        }

        NativeMemory.Clear(scratch.KeyGradient, (nuint)(KeyTile * dp * sizeof(float)));
        NativeMemory.Clear(scratch.ValueGradient, (nuint)(KeyTile * dvp * sizeof(float)));
        float* s = scratch.Scores, dS = scratch.ScoreGradient, ones = scratch.Ones;

        // Causal, bottom-right aligned: query i sees key j iff j <= i + (nk - nq); the query tiles before the first
        // that sees key j0 are skipped.
        long offset = (long)nk - nq;
        int firstQuery = a.Causal ? (int)Math.Clamp(j0 - offset, 0, nq) : 0;
        for (int hq = 0; hq < a.GroupSize; hq++)
        {
            int h = (kvHead * a.GroupSize) + hq, bh = (b * a.Heads) + h;
            float* qp = l.Queries + (bh * l.QueryPlane), gp = l.Gradients + (bh * l.GradientPlane);
            float* deltas = l.Deltas + ((long)bh * l.PaddedQueries), limits = l.Limits + ((long)bh * l.PaddedQueries);
            for (int i0 = firstQuery / QueryTile * QueryTile; i0 < nq; i0 += QueryTile)
            {
                int rows = Math.Min(QueryTile, nq - i0), tallRows = RoundUp(rows, Rows);

                // S = Q K^T and dP = dO V^T, [QueryTile, KeyTile], panel by panel (each panel stays in L1 across the row blocks).
                for (int c = 0; c < keyRows; c += panel)
                {
                    for (int r = 0; r < tallRows; r += Rows)
                    {
                        MicroKernel<TS, TV>.RunStrip(d, qp + ((long)(i0 + r) * dp), dp, 1, scratch.KeyPanels + ((long)c * d), panel, s + (r * ScoreStride) + c, ScoreStride, null);
                        MicroKernel<TS, TV>.RunStrip(dv, gp + ((long)(i0 + r) * dvp), dvp, 1, scratch.ValuePanels + ((long)c * dv), panel, dS + (r * ScoreStride) + c, ScoreStride, null);
                    }
                }

                // P and dS in place of S and dP; masked, padded and unseen entries are 0 in both.
                Transform(in g, b, h, i0, rows, tallRows, j0, cols, keyRows, offset, deltas + i0, limits + i0, scratch);

                // dV += P^T dO and dK += dS^T Q over this tile's rows: 6-key tiles read P and dS column-wise.
                for (int r = 0; r < keyRows; r += Rows)
                {
                    for (int c = 0; c < dvp; c += panel)
                    {
                        MicroKernel<TS, TV>.RunStrip(rows, s + r, 1, ScoreStride, gp + ((long)i0 * dvp) + c, dvp, scratch.ValueGradient + ((long)r * dvp) + c, dvp, ones);
                    }

                    for (int c = 0; c < dp; c += panel)
                    {
                        MicroKernel<TS, TV>.RunStrip(rows, dS + r, 1, ScoreStride, qp + ((long)i0 * dp) + c, dp, scratch.KeyGradient + ((long)r * dp) + c, dp, ones);
                    }
                }

                // dQ partial += dS K.
                float* dq = partial + (bh * l.QueryPlane) + ((long)i0 * dp);
                for (int c = 0; c < dp; c += panel)
                {
                    for (int r = 0; r < tallRows; r += Rows)
                    {
                        MicroKernel<TS, TV>.RunStrip(cols, dS + (r * ScoreStride), ScoreStride, 1, scratch.KeyRows + c, dp, dq + ((long)r * dp) + c, dp, ones);
                    }
                }
            }
        }

        // dK = s (dS^T Q), dV as summed.
        float scale = a.Scale;
        for (int c = 0; c < cols; c++)
        {
            float* dk = g.KeyGradient + ((((long)group * nk) + j0 + c) * d), dvRow = g.ValueGradient + ((((long)group * nk) + j0 + c) * dv);
            for (int t = 0; t < d; t++)
            {
                dk[t] = scale * scratch.KeyGradient[((long)c * dp) + t];
            }

            new ReadOnlySpan<float>(scratch.ValueGradient + ((long)c * dvp), dv).CopyTo(new Span<float>(dvRow, dv));
        }
    }

    /// <summary>
    /// Softmax: <c>P = 2^((s S + bias - L) log2 e)</c>, <c>dS = P (dP - D)</c>. Power (<c>x = s S</c>): <c>P = 2^((p ln|x| - L) log2 e)</c>,
    /// <c>dS = p P (dP - D) / x</c>, so that <c>dQ = s dS K</c> and <c>dK = s dS^T Q</c> hold for both. Entries past a row's causal limit,
    /// masked, padding, or in a row that saw no key are 0 in both. The exponent is formed in base e and converted last: its rounding is then
    /// relative to <c>|s S - L|</c> (small where P matters), not to <c>|L|</c>, which grows with the scores.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Transform(in BackwardArgs g, int b, int h, int i0, int rows, int tallRows, int j0, int cols, int keyRows, long offset, float* deltas, float* limits, Scratch scratch)
    {
        ref readonly AttentionArgs a = ref g.Forward;
        float* s = scratch.Scores, dS = scratch.ScoreGradient;
        for (int r = 0; r < tallRows; r++)
        {
            float* sr = s + (r * ScoreStride), gr = dS + (r * ScoreStride);
            int visible = r >= rows ? 0 : a.Causal ? (int)Math.Clamp(i0 + r + offset + 1 - j0, 0, cols) : cols;
            float limit = limits[r], delta = deltas[r];
            float* bias = a.Bias == null ? null : a.Bias + (b * a.BiasBatchStride) + (h * a.BiasHeadStride) + ((long)(i0 + r) * a.KeyCount) + j0;
            bool* mask = a.Mask == null ? null : a.Mask + (b * a.MaskBatchStride) + (h * a.MaskHeadStride) + ((long)(i0 + r) * a.KeyCount) + j0;
            int c = 0;
            if (a.Power > 0f)
            {
                for (; c < visible; c++)
                {
                    float x = a.Scale * sr[c];
                    bool keep = x != 0f && (mask == null || mask[c]);
                    float p = keep ? VectorMath.Exp2NonPositive<SimdScalar, float>(((a.Power * MathF.Log(MathF.Abs(x))) - limit) * VectorMath.Log2E) : 0f;
                    sr[c] = p;
                    gr[c] = keep ? a.Power * p * (gr[c] - delta) / x : 0f;
                }
            }
            else if (bias == null && mask == null)
            {
                int w = TS.Count;
                TV sc = TS.Broadcast(a.Scale), lim = TS.Broadcast(-limit), del = TS.Broadcast(delta), log2e = TS.Broadcast(VectorMath.Log2E);
                for (; c + w <= visible; c += w)
                {
                    TV p = VectorMath.Exp2NonPositive<TS, TV>(TS.Multiply(TS.MultiplyAdd(TS.Load(ref sr[c]), sc, lim), log2e));
                    TS.Store(p, ref sr[c]);
                    TS.Store(TS.Multiply(p, TS.Subtract(TS.Load(ref gr[c]), del)), ref gr[c]);
                }

                for (; c < visible; c++)
                {
                    float p = VectorMath.Exp2NonPositive<SimdScalar, float>(MathF.FusedMultiplyAdd(sr[c], a.Scale, -limit) * VectorMath.Log2E);
                    sr[c] = p;
                    gr[c] = p * (gr[c] - delta);
                }
            }
            else
            {
                for (; c < visible; c++)
                {
                    float exponent = MathF.FusedMultiplyAdd(sr[c], a.Scale, -limit);
                    if (bias != null)
                    {
                        exponent += bias[c];
                    }

                    float p = mask == null || mask[c] ? VectorMath.Exp2NonPositive<SimdScalar, float>(exponent * VectorMath.Log2E) : 0f;
                    sr[c] = p;
                    gr[c] = p * (gr[c] - delta);
                }
            }

            for (; c < keyRows; c++)
            {
                sr[c] = 0f;
                gr[c] = 0f;
            }

            if (g.ScoreGradient != null && r < rows)
            {
                long bh = ((long)b * a.Heads) + h;
                new ReadOnlySpan<float>(gr, cols).CopyTo(new Span<float>(g.ScoreGradient + ((((bh * a.QueryCount) + i0 + r) * a.KeyCount) + j0), cols));
            }
        }
    }

    /// <summary>Rows 0 .. count of a [count, width] matrix into panels of <paramref name="panel"/> rows, each [width][panel], for all <see cref="KeyTile"/> rows (missing rows zero).</summary>
    private static void Pack(float* source, int count, int width, int panel, float* packed)
    {
        for (int p0 = 0; p0 < KeyTile; p0 += panel)
        {
            float* target = packed + ((long)p0 * width);
            for (int c = 0; c < panel; c++)
            {
                int j = p0 + c;
                float* row = source + ((long)j * width);
                for (int t = 0; t < width; t++)
                {
                    target[(t * panel) + c] = j < count ? row[t] : 0f;
                }
            }
        }
    }

    private static ParallelOptions Options(in AttentionArgs a) => new() { MaxDegreeOfParallelism = a.MaxDegreeOfParallelism > 0 ? a.MaxDegreeOfParallelism : -1 };

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// <summary>The pre-pass's shared buffers: padded Q <c>[heads][paddedQueries][dp]</c>, padded dO <c>[heads][paddedQueries][dvp]</c>, D and L log2 e <c>[heads][paddedQueries]</c>.</summary>
    private readonly struct Layout(int dp, int dvp, int paddedQueries, long queryPlane, long gradientPlane, float* queries, float* gradients, float* deltas, float* limits)
    {
        public int Dp { get; } = dp;

        public int Dvp { get; } = dvp;

        public int PaddedQueries { get; } = paddedQueries;

        public long QueryPlane { get; } = queryPlane;

        public long GradientPlane { get; } = gradientPlane;

        public float* Queries { get; } = queries;

        public float* Gradients { get; } = gradients;

        public float* Deltas { get; } = deltas;

        public float* Limits { get; } = limits;
    }

    /// <summary>One worker's tile buffers, carved out of one pooled buffer and reused across its items.</summary>
    private sealed class Scratch : IDisposable
    {
        private readonly NativeBufferPool.Buffer _buffer;

        public Scratch(int d, int dv, int dp, int dvp)
        {
            long keys = (long)KeyTile * d, values = (long)KeyTile * dv, rows = (long)KeyTile * dp, valueRows = (long)KeyTile * dvp, scores = (long)QueryTile * ScoreStride;
            _buffer = NativeBufferPool.Rent(RoundUp16(keys) + RoundUp16(values) + (2 * rows) + valueRows + (2 * scores) + 16);
            KeyPanels = _buffer.Pointer;
            ValuePanels = KeyPanels + RoundUp16(keys);
            KeyRows = ValuePanels + RoundUp16(values);
            KeyGradient = KeyRows + rows;
            ValueGradient = KeyGradient + rows;
            Scores = ValueGradient + valueRows;
            ScoreGradient = Scores + scores;
            Ones = ScoreGradient + scores;
            new Span<float>(Ones, 16).Fill(1f);
        }

        /// <summary>K^T of the tile in panels, [KeyTile / panel][d][panel].</summary>
        public float* KeyPanels { get; }

        /// <summary>V^T of the tile in panels, [KeyTile / panel][dv][panel].</summary>
        public float* ValuePanels { get; }

        /// <summary>K of the tile, rows zero-padded to dp, [KeyTile][dp].</summary>
        public float* KeyRows { get; }

        /// <summary>dK accumulator (before the scale), [KeyTile][dp].</summary>
        public float* KeyGradient { get; }

        /// <summary>dV accumulator, [KeyTile][dvp].</summary>
        public float* ValueGradient { get; }

        /// <summary>S, then P, [QueryTile][ScoreStride].</summary>
        public float* Scores { get; }

        /// <summary>dP, then dS, [QueryTile][ScoreStride].</summary>
        public float* ScoreGradient { get; }

        /// <summary>Sixteen 1s: the micro-kernel's row scales when it accumulates.</summary>
        public float* Ones { get; }

        public void Dispose() => _buffer.Dispose();

        private static long RoundUp16(long x) => (x + 15) / 16 * 16;
    }
}
