using System.Runtime.CompilerServices;

namespace FastAttention.Kernels;

/// <summary>One head's inputs (row-major, dense) and gradients for the order-3 backward; <c>L</c> and <c>D = dO . O</c> per query.</summary>
internal unsafe struct TensorBackwardHead
{
    public float* Query, Key1, Key2, Value1, Value2, OutputGradient, LogSumExp, RowDot;
    public float* QueryGradient, Key1Gradient, Key2Gradient, Value1Gradient, Value2Gradient;
}

/// <summary>
/// The exact order-3 tensor attention backward (docs/algorithms.md §3.3) for one head, on the shared micro-kernel
/// (<see cref="MicroKernel{TS, TV}.Run6"/>, or its 6 x 2-vector form where Run6 would spill). Per query i the scores are a small GEMM, <c>S_i = (K1 diag q_i) K2^T</c>, and so
/// is <c>dP_i = (V1 diag dO_i) V2^T</c>; with the forward's log-sum-exp L_i and the pre-computed <c>D_i = dO_i . O_i</c>,
/// <c>P = e^(S - L_i)</c> and <c>dS = P (dP - D_i)</c> are elementwise, so the (j1, j2) plane can be cut into any tiles:
/// <list type="number">
/// <item>j1 tiles of <see cref="Tile1"/> rows; for each, <c>A = K1 diag q_i</c> (times s log2 e) and <c>B = V1 diag dO_i</c> (tile x d);</item>
/// <item>j2 tiles of <see cref="Tile2"/> columns: <c>S = A K2^T</c>, <c>dP = B V2^T</c>, then P and dS in place (masked past
/// the causal / window limit); <c>G += dS K2</c>, <c>PV += P V2</c>; <c>dK2 += dS^T A</c>, <c>dV2 += P^T B</c>;</item>
/// <item>after the j2 tiles: <c>dq_i += sum_j1 k1_j1 o G_j1</c>, <c>dK1_j1 += q_i o G_j1</c>, <c>dV1_j1 += dO_i o PV_j1</c>.</item>
/// </list>
/// The queries go in a fixed number of chunks (<see cref="Chunks"/>, independent of the thread count); each chunk owns
/// its queries' dq rows and accumulates its own partial dK1, dK2, dV1, dV2 (O(nk d) floats each), which are summed in
/// chunk order in double at the end: no atomics, and the same bits for every thread count. The scale s is applied once,
/// at the end (for dK2, whose A carried s log2 e, the factor is 1 / log2 e). Extra memory: four zero-padded copies of the
/// keys and values, the partials of each chunk, and per thread the tiles plus K2^T and V2^T packed per query.
/// </summary>
internal static unsafe class TensorBackwardKernel<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>Query chunks per head, at most: fixed, so the partition (and the bits) do not depend on the threads.</summary>
    public const int Chunks = 16;

    /// <summary>j1 rows per tile: a multiple of the micro-kernel's 6 rows.</summary>
    public const int Tile1 = 96;

    /// <summary>j2 columns per tile: a multiple of the micro-kernel's columns and of its 6 rows, since
    /// <c>dK2 += dS^T A</c> runs with j2 as rows.</summary>
    public static int Tile2 => 96 % Columns == 0 ? 96 : 192;

    /// <summary>Columns per micro-kernel call: 4 vectors (<see cref="MicroKernel{TS, TV}.Run6"/>) with 32 vector registers
    /// (AVX-512), 2 (<see cref="MicroKernel{TS, TV}.Run6x2"/>) with 16 (AVX2, and the scalar fallback), where Run6 spills.</summary>
    private static int Columns => MicroKernel<TS, TV>.StripColumns;

    private static int R => MicroKernel<TS, TV>.TallRows;

    /// <summary>
    /// Runs one head: <paramref name="ranges"/> gives each query's visible [lo, hi] for j1 and j2. The padded copies, the
    /// partials and (with one thread) the tile scratch come from <paramref name="buffers"/>, which a caller running many heads
    /// keeps across them.
    /// </summary>
    public static void Run(in TensorBackwardHead head, int nq, int nk, int d, int dv, float scale, Func<int, (int Lo1, int Hi1, int Lo2, int Hi2)> ranges, int threads,
        TensorBackwardBuffers buffers)
    {
        int dp = RoundUp(d, Columns), dvp = RoundUp(dv, Columns), t2 = Tile2;
        int rows1 = nk + Tile1, rows2 = nk + t2;

        // Zero-padded copies: K1 [rows1, dp], V1 [rows1, dvp], K2 [rows2, dp], V2 [rows2, dvp].
        long k1Size = (long)rows1 * dp, v1Size = (long)rows1 * dvp, k2Size = (long)rows2 * dp, v2Size = (long)rows2 * dvp;
        long shared = k1Size + v1Size + k2Size + v2Size;
        // The products and packs read rows below nk + Columns + R only (a tile's rows rounded up to R, its columns to Columns):
        // only those padding rows are cleared, and the rest of the copies is never read.
        float* k1 = buffers.Get(0, shared), v1 = k1 + k1Size, k2 = v1 + v1Size, v2 = k2 + k2Size;
        int read = nk + Columns + R;
        Pad(head.Key1, nk, d, k1, Math.Min(rows1, read), dp);
        Pad(head.Value1, nk, dv, v1, Math.Min(rows1, read), dvp);
        Pad(head.Key2, nk, d, k2, Math.Min(rows2, read), dp);
        Pad(head.Value2, nk, dv, v2, Math.Min(rows2, read), dvp);

        // Each chunk's partial dK1, dV1, dK2, dV2, laid out like the padded copies. The products write rows below nk + R
        // only (dK2 and dV2 take j2 rows in groups of R), so only those are cleared and the rest is never read.
        int chunks = Math.Min(nq, Chunks);
        long partial = k1Size + v1Size + k2Size + v2Size;
        float* all = buffers.Get(1, chunks * partial);
        int written = Math.Min(nk + R, rows1);
        TensorBackwardHead h = head;
        nint k1n = (nint)k1, v1n = (nint)v1, k2n = (nint)k2, v2n = (nint)v2, alln = (nint)all;
        long scratchSize = ((long)Tile1 * (dp + dvp) * 2) + (2L * Tile1 * t2) + dp + R + ((long)rows2 * (d + dv));
        Func<TensorBackwardBuffers.Lease> scratch = threads == 1 ? () => buffers.Borrow(2, scratchSize) : () => TensorBackwardBuffers.Lease.Rent(scratchSize);
        ParallelWork.Run(chunks, threads, scratch, (item, lease) =>
        {
            int c = chunks - 1 - item; // later queries see more keys when causal: heaviest first
            float* mine = (float*)alln + (c * partial);
            new Span<float>(mine, written * dp).Clear();
            new Span<float>(mine + k1Size, written * dvp).Clear();
            new Span<float>(mine + k1Size + v1Size, written * dp).Clear();
            new Span<float>(mine + k1Size + v1Size + k2Size, written * dvp).Clear();
            var work = new Chunk
            {
                K1 = (float*)k1n, V1 = (float*)v1n, K2 = (float*)k2n, V2 = (float*)v2n,
                DK1 = mine, DV1 = mine + k1Size, DK2 = mine + k1Size + v1Size, DV2 = mine + k1Size + v1Size + k2Size,
                D = d, Dv = dv, Dp = dp, Dvp = dvp, Scratch = lease.Pointer,
            };
            for (int i = (int)((long)c * nq / chunks); i < (int)((long)(c + 1) * nq / chunks); i++)
            {
                work.Query(h, i, scale, ranges(i));
            }
        });

        // Sum the chunks in their fixed order (in double), scale by s, drop the padding.
        double[] sums = buffers.Sums(nk * Math.Max(d, dv));
        Reduce(all, chunks, partial, 0, nk, d, dp, scale, head.Key1Gradient, sums);
        Reduce(all, chunks, partial, k1Size, nk, dv, dvp, 1f, head.Value1Gradient, sums);
        float log2Scale = scale * VectorMath.Log2E; // A carried it: dK2's factor is s / (s log2 e), and 0 for s = 0 (A was 0)
        Reduce(all, chunks, partial, k1Size + v1Size, nk, d, dp, log2Scale == 0 ? 0 : scale / (double)log2Scale, head.Key2Gradient, sums);
        Reduce(all, chunks, partial, k1Size + v1Size + k2Size, nk, dv, dvp, 1f, head.Value2Gradient, sums);
    }

    /// <summary>One chunk's view: the shared padded inputs, its partial gradients and its thread's scratch.</summary>
    private struct Chunk
    {
        public float* K1, V1, K2, V2, DK1, DV1, DK2, DV2, Scratch;
        public int D, Dv, Dp, Dvp;

        /// <summary>Query i: every (j1, j2) tile of its visible box.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void Query(in TensorBackwardHead head, int i, float scale, (int Lo1, int Hi1, int Lo2, int Hi2) box)
        {
            int t2 = Tile2;
            float* a = Scratch, b = a + (Tile1 * Dp), g = b + (Tile1 * Dvp), pv = g + (Tile1 * Dp);
            float* s = pv + (Tile1 * Dvp), dP = s + (Tile1 * t2), dq = dP + (Tile1 * t2), ones = dq + Dp;
            float* q = head.Query + ((long)i * D), dO = head.OutputGradient + ((long)i * Dv), dqOut = head.QueryGradient + ((long)i * D);
            float lse = head.LogSumExp[i];
            new Span<float>(dqOut, D).Clear();
            if (box.Hi1 < box.Lo1 || box.Hi2 < box.Lo2 || float.IsNegativeInfinity(lse))
            {
                return; // no visible pair: zero gradient
            }

            for (int r = 0; r < R; r++)
            {
                ones[r] = 1f;
            }

            new Span<float>(dq, Dp).Clear();

            // K2^T and V2^T over the query's j2 range, one contiguous [d][Tile2] block per j2 tile: the score products' B
            // panels then sit on a few pages (K2's transpose with a row stride of nk would put each of d rows on its own).
            // Only the columns the products read are packed: the last tile's up to its width rounded to the micro-kernel's.
            int tiles2 = (box.Hi2 - box.Lo2 + t2) / t2, packed = RoundUp(box.Hi2 - box.Lo2 + 1, Columns);
            float* k2t = ones + R, v2t = k2t + ((long)tiles2 * D * t2);
            PackTransposed(K2 + ((long)box.Lo2 * Dp), Dp, D, packed, t2, k2t);
            PackTransposed(V2 + ((long)box.Lo2 * Dvp), Dvp, Dv, packed, t2, v2t);
            float rowDot = head.RowDot[i];
            // A carries the forward's factor s log2 e, applied as the forward applies it (to q o k1, in float), so S is the
            // forward's base-2 score to the bit when it ran the tiled kernel: P = 2^(S - L log2 e) is then consistent with
            // the L the forward summed (a score error would not cancel against L here, unlike in a normalised softmax).
            // L log2 e goes in two floats (high + low): S - high nearly cancels for the largest weights.
            float log2Scale = scale * VectorMath.Log2E;
            double log2Lse = lse * (double)VectorMath.Log2E;
            var exponent = new Exponent((float)log2Lse, (float)(log2Lse - (float)log2Lse));
            for (int a0 = box.Lo1; a0 <= box.Hi1; a0 += Tile1)
            {
                int rows = Math.Min(Tile1, box.Hi1 - a0 + 1), rowsPadded = RoundUp(rows, R);

                // 1. A = K1 diag q_i, B = V1 diag dO_i over the tile's rows (the padded columns stay 0: K1's padding is 0).
                Scale(K1 + ((long)a0 * Dp), Dp, q, D, rowsPadded, log2Scale, a);
                Scale(V1 + ((long)a0 * Dvp), Dvp, dO, Dv, rowsPadded, 1f, b);
                new Span<float>(g, rowsPadded * Dp).Clear();
                new Span<float>(pv, rowsPadded * Dvp).Clear();
                for (int b0 = box.Lo2; b0 <= box.Hi2; b0 += t2)
                {
                    int cols = Math.Min(t2, box.Hi2 - b0 + 1), colsPadded = RoundUp(cols, Columns), rows2 = RoundUp(cols, R);

                    // 2. S = A K2^T and dP = B V2^T on the tile.
                    long tile = (b0 - box.Lo2) / t2;
                    Product(rowsPadded, colsPadded, D, a, Dp, 1, k2t + (tile * D * t2), t2, s, t2, null);
                    Product(rowsPadded, colsPadded, Dv, b, Dvp, 1, v2t + (tile * Dv * t2), t2, dP, t2, null);

                    // 3. P = 2^(S s log2 e - L log2 e) into S, dS = P (dP - D_i) into dP; 0 past the limits.
                    Softmax(s, dP, rows, rowsPadded, cols, Math.Max(colsPadded, rows2), t2, exponent, rowDot);

                    // 4. G += dS K2, PV += P V2 (depth: the tile's j2); dK2 += dS^T A, dV2 += P^T B (depth: the tile's j1).
                    Product(rowsPadded, Dp, colsPadded, dP, t2, 1, K2 + ((long)b0 * Dp), Dp, g, Dp, ones);
                    Product(rowsPadded, Dvp, colsPadded, s, t2, 1, V2 + ((long)b0 * Dvp), Dvp, pv, Dvp, ones);
                    Product(rows2, Dp, rowsPadded, dP, 1, t2, a, Dp, DK2 + ((long)b0 * Dp), Dp, ones);
                    Product(rows2, Dvp, rowsPadded, s, 1, t2, b, Dvp, DV2 + ((long)b0 * Dvp), Dvp, ones);
                }

                // 5. dq_i += sum_j1 k1_j1 o G_j1, dK1_j1 += q_i o G_j1, dV1_j1 += dO_i o PV_j1.
                for (int r = 0; r < rows; r++)
                {
                    float* k1Row = K1 + ((long)(a0 + r) * Dp), gRow = g + (r * Dp), pvRow = pv + (r * Dvp);
                    float* dk1 = DK1 + ((long)(a0 + r) * Dp), dv1 = DV1 + ((long)(a0 + r) * Dvp);
                    for (int l = 0; l < D; l++)
                    {
                        dq[l] = MathF.FusedMultiplyAdd(k1Row[l], gRow[l], dq[l]);
                        dk1[l] = MathF.FusedMultiplyAdd(q[l], gRow[l], dk1[l]);
                    }

                    for (int c = 0; c < Dv; c++)
                    {
                        dv1[c] = MathF.FusedMultiplyAdd(dO[c], pvRow[c], dv1[c]);
                    }
                }
            }

            for (int l = 0; l < D; l++)
            {
                dqOut[l] = scale * dq[l];
            }
        }
    }

    /// <summary>
    /// C[m x n] = A B (or, with <paramref name="ones"/>, C += A B) on the micro-kernel: m a multiple of 6, n of the kernel's
    /// columns. A's element (r, t) is <c>a[r aRow + t aCol]</c>; B's row t starts at <c>b + t ldb</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Product(int m, int n, int depth, float* a, nint aRow, nint aCol, float* b, long ldb, float* c, long ldc, float* ones)
    {
        for (int j = 0; j < n; j += Columns)
        {
            for (int r = 0; r < m; r += R)
            {
                MicroKernel<TS, TV>.RunStrip(depth, a + (r * aRow), aRow, aCol, b + j, (nint)ldb, c + (r * ldc) + j, (nint)ldc, ones);
            }
        }
    }

    /// <summary>rows x padded columns of the (P, dS) tile from (S, dP); rows past <paramref name="rows"/> and columns past <paramref name="cols"/> (up to <paramref name="width"/>) are 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Softmax(float* s, float* dP, int rows, int rowsPadded, int cols, int width, int ld, Exponent exponent, float rowDot)
    {
        int w = TS.Count, vectorEnd = RoundUp(cols, w);
        TV dot = TS.Broadcast(rowDot), shift = TS.Broadcast(exponent.Shift), shiftLow = TS.Broadcast(exponent.ShiftLow);
        for (int r = 0; r < rowsPadded; r++)
        {
            float* sRow = s + (r * ld), dRow = dP + (r * ld);
            int start = 0;
            if (r < rows)
            {
                for (; start < vectorEnd; start += w)
                {
                    TV p = VectorMath.Exp2NonPositive<TS, TV>(TS.Subtract(TS.Subtract(TS.Load(ref sRow[start]), shift), shiftLow));
                    TS.Store(p, ref sRow[start]);
                    TS.Store(TS.Multiply(p, TS.Subtract(TS.Load(ref dRow[start]), dot)), ref dRow[start]);
                }

                start = cols;
            }

            for (int x = start; x < width; x++)
            {
                sRow[x] = 0f;
                dRow[x] = 0f;
            }
        }
    }

    /// <summary><c>L log2 e</c> as a float plus the float of its remainder.</summary>
    private readonly record struct Exponent(float Shift, float ShiftLow);

    /// <summary>rows x width of <c>(source diag(factor)) times</c>: row r of the padded source times the first <paramref name="length"/> factors, then times <paramref name="times"/> (0 beyond).</summary>
    private static void Scale(float* source, int width, float* factor, int length, int rows, float times, float* target)
    {
        for (int r = 0; r < rows; r++)
        {
            float* x = source + ((long)r * width), y = target + ((long)r * width);
            System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(x, length), new ReadOnlySpan<float>(factor, length), new Span<float>(y, length));
            if (times != 1f)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(y, length), times, new Span<float>(y, length));
            }

            new Span<float>(y + length, width - length).Clear();
        }
    }

    /// <summary>rows x width of the source into the first rows of a [paddedRows, paddedWidth] target, zero everywhere else.</summary>
    private static void Pad(float* source, int rows, int width, float* target, int paddedRows, int paddedWidth)
    {
        for (int r = 0; r < rows; r++)
        {
            new ReadOnlySpan<float>(source + ((long)r * width), width).CopyTo(new Span<float>(target + ((long)r * paddedWidth), width));
            new Span<float>(target + ((long)r * paddedWidth) + width, paddedWidth - width).Clear();
        }

        new Span<float>(target + ((long)rows * paddedWidth), (paddedRows - rows) * paddedWidth).Clear();
    }

    /// <summary>Rows 0 .. count of the padded source as tiles of <c>[width][tile]</c> (its transpose, tile by tile); the rest of the last tile is left as it is.</summary>
    private static void PackTransposed(float* source, int stride, int width, int count, int tile, float* target)
    {
        for (int x = 0; x * tile < count; x++)
        {
            float* block = target + ((long)x * width * tile);
            for (int j = 0; j < Math.Min(tile, count - (x * tile)); j++)
            {
                float* row = source + ((long)((x * tile) + j) * stride);
                for (int l = 0; l < width; l++)
                {
                    block[(l * tile) + j] = row[l];
                }
            }
        }
    }

    /// <summary>
    /// target[j, l] = factor * sum over chunks (in order, in double) of the chunk's partial at <paramref name="offset"/>; the chunks
    /// are added one whole partial at a time into <paramref name="sums"/> (sequential reads), each element in chunk order.
    /// </summary>
    private static void Reduce(float* all, int chunks, long partial, long offset, int nk, int width, int paddedWidth, double factor, float* target, double[] sums)
    {
        Array.Clear(sums, 0, nk * width);
        for (int c = 0; c < chunks; c++)
        {
            float* source = all + (c * partial) + offset;
            for (int j = 0; j < nk; j++)
            {
                for (int l = 0; l < width; l++)
                {
                    sums[(j * width) + l] += source[((long)j * paddedWidth) + l];
                }
            }
        }

        for (int x = 0; x < nk * width; x++)
        {
            target[x] = (float)(factor * sums[x]);
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;
}
