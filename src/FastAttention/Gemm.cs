using System.Runtime.Intrinsics;

using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// Single-precision GEMM on the shared micro-kernel family (<see cref="MicroKernel{TS, TV}"/>):
/// <c>C = op(A) op(B) + beta C</c>, row-major, <c>op</c> an optional transpose. BLIS-style blocking
/// (Goto and van de Geijn):
/// <list type="number">
/// <item>columns of C in blocks of <see cref="BlockColumns"/>, depth in blocks of <see cref="BlockDepth"/>;
/// each (depth, column) block of B is packed once, in parallel, into zero-padded panels of 4 vectors
/// (512 x 64 floats = 128 KiB each; the block lives in L3);</item>
/// <item>rows of C in blocks of at most <see cref="BlockRows"/>, handed to the threads from a shared
/// counter: each packs its block of A into 6-row slivers ([depth][6]; about 512 KiB, in L2);</item>
/// <item>for each B panel (in L2) every sliver of the block runs the 6-row micro-kernel against it
/// (24 accumulators; the product is added to C once per depth block).</item>
/// </list>
/// Every element of C is computed by the same sequence of operations whatever the thread count, so
/// the result bits do not depend on it.
/// </summary>
public static unsafe class Gemm
{
    /// <summary>Depth (k) per block: C is read and written once per depth block, so deeper blocks save C traffic.</summary>
    internal const int BlockDepth = 512;

    /// <summary>Columns (n) per packed block of B: 512 x 4096 floats = 8 MiB, in L3.</summary>
    internal const int BlockColumns = 4096;

    /// <summary>
    /// Rows of C per parallel work item, at most: the packed A block is 252 x 512 floats (about 512 KiB,
    /// half of L2), and every B panel streamed from L3 is used by up to 252 rows.
    /// </summary>
    internal const int BlockRows = 252;

    /// <summary>C[m x n] = op(A)[m x k] op(B)[k x n] + beta C on dense row-major spans (lengths checked).</summary>
    /// <param name="m">Rows of C and of op(A).</param>
    /// <param name="n">Columns of C and of op(B).</param>
    /// <param name="k">Columns of op(A), rows of op(B).</param>
    /// <param name="a">A, stored [m x k], or [k x m] when <paramref name="transposeA"/>.</param>
    /// <param name="transposeA">Whether op(A) is the transpose of the stored A.</param>
    /// <param name="b">B, stored [k x n], or [n x k] when <paramref name="transposeB"/>.</param>
    /// <param name="transposeB">Whether op(B) is the transpose of the stored B.</param>
    /// <param name="c">C [m x n], read when <paramref name="beta"/> is not 0, written.</param>
    /// <param name="beta">The weight of C's previous contents.</param>
    /// <param name="maxDegreeOfParallelism">Worker threads; 0 or less means all cores. The result bits do not depend on it.</param>
    /// <exception cref="ArgumentException">A size is negative or a span's length does not match.</exception>
    public static void Multiply(int m, int n, int k, ReadOnlySpan<float> a, bool transposeA, ReadOnlySpan<float> b, bool transposeB, Span<float> c, float beta, int maxDegreeOfParallelism)
    {
        if (m < 0 || n < 0 || k < 0 || a.Length != (long)m * k || b.Length != (long)k * n || c.Length != (long)m * n)
        {
            throw new ArgumentException($"GEMM spans ({a.Length}, {b.Length}, {c.Length}) do not match m = {m}, n = {n}, k = {k}.");
        }

        fixed (float* pa = a, pb = b, pc = c)
        {
            Multiply(m, n, k, pa, transposeA, pb, transposeB, pc, beta, maxDegreeOfParallelism);
        }
    }

    /// <summary>C[m x n] = op(A)[m x k] op(B)[k x n] + beta C; pointers to dense row-major storage.</summary>
    internal static void Multiply(int m, int n, int k, float* a, bool transposeA, float* b, bool transposeB, float* c, float beta, int maxDegreeOfParallelism)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Typed<Simd512, Vector512<float>>.Multiply(m, n, k, a, transposeA, b, transposeB, c, beta, maxDegreeOfParallelism);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Typed<Simd256, Vector256<float>>.Multiply(m, n, k, a, transposeA, b, transposeB, c, beta, maxDegreeOfParallelism);
        }
        else
        {
            Typed<SimdScalar, float>.Multiply(m, n, k, a, transposeA, b, transposeB, c, beta, maxDegreeOfParallelism);
        }
    }

    /// <summary>The GEMM written once over a vector width.</summary>
    internal static class Typed<TS, TV>
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        private const int R = MicroKernel<TS, TV>.TallRows;

        public static void Multiply(int m, int n, int k, float* a, bool transposeA, float* b, bool transposeB, float* c, float beta, int maxDegreeOfParallelism)
        {
            var options = new ParallelOptions { MaxDegreeOfParallelism = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : -1 };
            if (m == 0 || n == 0)
            {
                return; // C is empty
            }

            if (k == 0)
            {
                Parallel.For(0, m, options, i =>
                {
                    for (int j = 0; j < n; j++)
                    {
                        c[((long)i * n) + j] = beta == 0f ? 0f : beta * c[((long)i * n) + j];
                    }
                });
                return;
            }

            int nr = MicroKernel<TS, TV>.Columns;

            // A's element (i, t): row-major [m, k] or, transposed, [k, m].
            nint aRow = transposeA ? 1 : k, aCol = transposeA ? m : 1;
            // Row blocks of at most BlockRows, as many as a multiple of the thread count, so the
            // threads get equal shares (4096 rows in blocks of 252 would leave one thread a block more).
            int threads = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : Environment.ProcessorCount;
            int rowBlocks = (m + BlockRows - 1) / BlockRows;
            rowBlocks = (rowBlocks + threads - 1) / threads * threads;
            int blockRows = Math.Min(BlockRows, (((m + rowBlocks - 1) / rowBlocks) + R - 1) / R * R);
            rowBlocks = (m + blockRows - 1) / blockRows;
            using NativeBufferPool.Buffer packed = NativeBufferPool.Rent((long)BlockDepth * (BlockColumns + nr));
            float* panels = packed.Pointer;
            for (int j0 = 0; j0 < n; j0 += BlockColumns)
            {
                int cols = Math.Min(BlockColumns, n - j0);
                int paddedCols = (cols + nr - 1) / nr * nr;
                for (int t0 = 0; t0 < k; t0 += BlockDepth)
                {
                    int depth = Math.Min(BlockDepth, k - t0);
                    int panelCount = paddedCols / nr;
                    Parallel.For(0, panelCount, options, p => PackB(b, transposeB, n, k, t0, depth, j0, cols, p * nr, panels + ((long)p * nr * depth)));

                    // The first depth block overwrites (or scales) C; later ones accumulate.
                    float blockBeta = t0 == 0 ? beta : 1f;
                    float* aBlock = a + (t0 * aCol);
                    ParallelWork.Run(rowBlocks, maxDegreeOfParallelism, () => NativeBufferPool.Rent(((long)BlockRows * BlockDepth) + (R * nr) + R), (rb, scratch) =>
                        RowBlock(rb * blockRows, Math.Min(blockRows, m - (rb * blockRows)), aBlock, aRow, aCol, depth, panels, cols, paddedCols,
                            c + j0, n, blockBeta, scratch.Pointer));
                }
            }
        }

        /// <summary>Packs rows i0 .. i0+rows of the A block into 6-row slivers and multiplies them into every panel.</summary>
        private static void RowBlock(int i0, int rows, float* a, nint aRow, nint aCol, int depth, float* panels, int cols, int paddedCols,
            float* c, int ldc, float beta, float* scratch)
        {
            int nr = MicroKernel<TS, TV>.Columns;
            int slivers = (rows + R - 1) / R;
            float* packedA = scratch;
            float* tile = scratch + ((long)BlockRows * BlockDepth);
            float* betas = tile + (R * nr);
            for (int r = 0; r < R; r++)
            {
                betas[r] = beta;
            }

            // Slivers [depth][4], zero rows past the end of A: the kernel's four broadcasts per step
            // read one cache line.
            for (int sl = 0; sl < slivers; sl++)
            {
                float* sliver = packedA + ((long)sl * depth * R);
                for (int r = 0; r < R; r++)
                {
                    int i = (sl * R) + r;
                    float* source = a + ((i0 + i) * aRow);
                    for (int t = 0; t < depth; t++)
                    {
                        sliver[(t * R) + r] = i < rows ? source[t * aCol] : 0f;
                    }
                }
            }

            for (int j = 0; j < paddedCols; j += nr)
            {
                float* panel = panels + ((long)j * depth);
                bool fullWidth = j + nr <= cols;
                for (int sl = 0; sl < slivers; sl++)
                {
                    float* sliver = packedA + ((long)sl * depth * R);
                    int i = i0 + (sl * R);
                    float* target = c + ((long)i * ldc) + j;
                    int sliverRows = Math.Min(R, i0 + rows - i);
                    if (fullWidth && sliverRows == R)
                    {
                        MicroKernel<TS, TV>.Run6(depth, sliver, 1, R, panel, nr, target, ldc, beta == 0f ? null : betas);
                        continue;
                    }

                    // Edge tile: compute into a scratch tile, then merge the valid part into C.
                    MicroKernel<TS, TV>.Run6(depth, sliver, 1, R, panel, nr, tile, nr, null);
                    int width = Math.Min(nr, cols - j);
                    for (int r = 0; r < sliverRows; r++)
                    {
                        for (int x = 0; x < width; x++)
                        {
                            float* element = target + ((long)r * ldc) + x;
                            *element = beta == 0f ? tile[(r * nr) + x] : MathF.FusedMultiplyAdd(beta, *element, tile[(r * nr) + x]);
                        }
                    }
                }
            }
        }

        /// <summary>One panel: B[t0 .. t0+depth, j0+jp .. j0+jp+nr] as [depth][nr], zero past column <paramref name="cols"/>.</summary>
        private static void PackB(float* b, bool transposeB, int n, int k, int t0, int depth, int j0, int cols, int jp, float* panel)
        {
            int nr = MicroKernel<TS, TV>.Columns;
            for (int t = 0; t < depth; t++)
            {
                for (int x = 0; x < nr; x++)
                {
                    int col = jp + x;
                    panel[(t * nr) + x] = col >= cols ? 0f
                        : transposeB ? b[((long)(j0 + col) * k) + t0 + t]
                        : b[((long)(t0 + t) * n) + j0 + col];
                }
            }
        }
    }
}
