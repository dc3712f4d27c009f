using System.Runtime.CompilerServices;

namespace FastAttention.Kernels;

/// <summary>
/// The register-blocked micro-kernel every dense product in the library runs on: the GEMM, and both
/// products of the attention kernel (<c>Q K^T</c> and <c>P V</c>), in a 6-row (<see cref="Run6"/>), 8-row
/// two-vector (<see cref="RunTwo"/>) or one-vector (<see cref="RunNarrow"/>) form, each computing
/// <c>C = AB</c> or <c>C = diag(scale) C + AB</c> with many independent FMA chains (two FMA pipes of
/// latency 4 need at least 8). A is read in place through strides (row-major, column-major or packed); B is a panel
/// of 4 vectors per row with row stride <c>ldb</c>.
/// </summary>
internal static unsafe class MicroKernel<TS, TV>
    where TS : struct, ISimd<TV>
    where TV : struct
{
    /// <summary>Rows of A and C per tile.</summary>
    public const int Rows = 4;

    /// <summary>Columns of B and C per tile: four vectors.</summary>
    public static int Columns => 4 * TS.Count;

    // Every form computes a tile C = AB when scale is null, else C = scale[r] C + AB. A's element (r, t) is
    // a[r * aRow + t * aCol]; B's row t starts at b + t * ldb; C's row r at c + r * ldc. The product is accumulated
    // from zero and added to C once, which keeps long sums blocked.

    /// <summary>
    /// Columns of the widest 6-row tile whose accumulators stay in registers: four vectors (<see cref="Run6"/>) where there are 32
    /// vector registers (512-bit), two (<see cref="Run6x2"/>) on 16-register machines (AVX2, and the scalar fallback).
    /// </summary>
    public static int StripColumns => TS.Count == 16 ? Columns : 2 * TS.Count;

    /// <summary>The 6-row tile <see cref="StripColumns"/> wide: <see cref="Run6"/> or <see cref="Run6x2"/>, same arguments.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void RunStrip(int k, float* a, nint aRow, nint aCol, float* b, nint ldb, float* c, nint ldc, float* scale)
    {
        if (TS.Count == 16)
        {
            Run6(k, a, aRow, aCol, b, ldb, c, ldc, scale);
        }
        else
        {
            Run6x2(k, a, aRow, aCol, b, ldb, c, ldc, scale);
        }
    }

    /// <summary>Rows of the taller tile (<see cref="Run6"/>).</summary>
    public const int TallRows = 6;

    /// <summary>
    /// 6 rows by 4 vectors: 24 accumulators, so each step issues 10 loads (4 B vectors,
    /// 6 broadcasts) per 24 FMAs instead of a 4-row tile's 8 per 16. The GEMM runs on it, and so do both products of the
    /// tiled attention kernel (its query tiles are padded to a multiple of 24 rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run6(int k, float* a, nint aRow, nint aCol, float* b, nint ldb, float* c, nint ldc, float* scale)
    {
        int w = TS.Count;
        TV zero = TS.Broadcast(0f);
        TV c00 = zero, c01 = zero, c02 = zero, c03 = zero;
        TV c10 = zero, c11 = zero, c12 = zero, c13 = zero;
        TV c20 = zero, c21 = zero, c22 = zero, c23 = zero;
        TV c30 = zero, c31 = zero, c32 = zero, c33 = zero;
        TV c40 = zero, c41 = zero, c42 = zero, c43 = zero;
        TV c50 = zero, c51 = zero, c52 = zero, c53 = zero;
        for (int t = 0; t < k; t++)
        {
            TV b0 = TS.Load(ref b[0]);
            TV b1 = TS.Load(ref b[w]);
            TV b2 = TS.Load(ref b[2 * w]);
            TV b3 = TS.Load(ref b[3 * w]);
            TV x = TS.Broadcast(a[0]);
            c00 = TS.MultiplyAdd(x, b0, c00);
            c01 = TS.MultiplyAdd(x, b1, c01);
            c02 = TS.MultiplyAdd(x, b2, c02);
            c03 = TS.MultiplyAdd(x, b3, c03);
            x = TS.Broadcast(a[aRow]);
            c10 = TS.MultiplyAdd(x, b0, c10);
            c11 = TS.MultiplyAdd(x, b1, c11);
            c12 = TS.MultiplyAdd(x, b2, c12);
            c13 = TS.MultiplyAdd(x, b3, c13);
            x = TS.Broadcast(a[2 * aRow]);
            c20 = TS.MultiplyAdd(x, b0, c20);
            c21 = TS.MultiplyAdd(x, b1, c21);
            c22 = TS.MultiplyAdd(x, b2, c22);
            c23 = TS.MultiplyAdd(x, b3, c23);
            x = TS.Broadcast(a[3 * aRow]);
            c30 = TS.MultiplyAdd(x, b0, c30);
            c31 = TS.MultiplyAdd(x, b1, c31);
            c32 = TS.MultiplyAdd(x, b2, c32);
            c33 = TS.MultiplyAdd(x, b3, c33);
            x = TS.Broadcast(a[4 * aRow]);
            c40 = TS.MultiplyAdd(x, b0, c40);
            c41 = TS.MultiplyAdd(x, b1, c41);
            c42 = TS.MultiplyAdd(x, b2, c42);
            c43 = TS.MultiplyAdd(x, b3, c43);
            x = TS.Broadcast(a[5 * aRow]);
            c50 = TS.MultiplyAdd(x, b0, c50);
            c51 = TS.MultiplyAdd(x, b1, c51);
            c52 = TS.MultiplyAdd(x, b2, c52);
            c53 = TS.MultiplyAdd(x, b3, c53);
            a += aCol;
            b += ldb;
        }

        Write(c, scale, 0, c00, c01, c02, c03);
        Write(c + ldc, scale, 1, c10, c11, c12, c13);
        Write(c + (2 * ldc), scale, 2, c20, c21, c22, c23);
        Write(c + (3 * ldc), scale, 3, c30, c31, c32, c33);
        Write(c + (4 * ldc), scale, 4, c40, c41, c42, c43);
        Write(c + (5 * ldc), scale, 5, c50, c51, c52, c53);
    }

    /// <summary>
    /// 6 rows by 2 vectors: 12 accumulators, 2 B vectors and a broadcast fit AVX2's 16 registers, where <see cref="Run6"/>'s
    /// 24 accumulators spill (the JIT keeps half of them on the stack, a load and a store around each of their FMAs). Each step
    /// issues 8 loads (2 B vectors, 6 broadcasts) per 12 FMAs. With 256-bit vectors the exact forward and backward and the tensor
    /// backward run their products on it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run6x2(int k, float* a, nint aRow, nint aCol, float* b, nint ldb, float* c, nint ldc, float* scale)
    {
        int w = TS.Count;
        TV zero = TS.Broadcast(0f);
        TV c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero;
        TV c30 = zero, c31 = zero, c40 = zero, c41 = zero, c50 = zero, c51 = zero;
        for (int t = 0; t < k; t++)
        {
            TV b0 = TS.Load(ref b[0]);
            TV b1 = TS.Load(ref b[w]);
            TV x = TS.Broadcast(a[0]);
            c00 = TS.MultiplyAdd(x, b0, c00);
            c01 = TS.MultiplyAdd(x, b1, c01);
            x = TS.Broadcast(a[aRow]);
            c10 = TS.MultiplyAdd(x, b0, c10);
            c11 = TS.MultiplyAdd(x, b1, c11);
            x = TS.Broadcast(a[2 * aRow]);
            c20 = TS.MultiplyAdd(x, b0, c20);
            c21 = TS.MultiplyAdd(x, b1, c21);
            x = TS.Broadcast(a[3 * aRow]);
            c30 = TS.MultiplyAdd(x, b0, c30);
            c31 = TS.MultiplyAdd(x, b1, c31);
            x = TS.Broadcast(a[4 * aRow]);
            c40 = TS.MultiplyAdd(x, b0, c40);
            c41 = TS.MultiplyAdd(x, b1, c41);
            x = TS.Broadcast(a[5 * aRow]);
            c50 = TS.MultiplyAdd(x, b0, c50);
            c51 = TS.MultiplyAdd(x, b1, c51);
            a += aCol;
            b += ldb;
        }

        WriteTwo(c, scale, 0, c00, c01);
        WriteTwo(c + ldc, scale, 1, c10, c11);
        WriteTwo(c + (2 * ldc), scale, 2, c20, c21);
        WriteTwo(c + (3 * ldc), scale, 3, c30, c31);
        WriteTwo(c + (4 * ldc), scale, 4, c40, c41);
        WriteTwo(c + (5 * ldc), scale, 5, c50, c51);
    }

    /// <summary>Rows of the two-vector-wide tile (<see cref="RunTwo"/>).</summary>
    public const int TwoRows = 8;

    /// <summary>
    /// The two-vector-wide form, for 8 rows: 16 accumulators again, so each step issues 10
    /// loads (2 B vectors, 8 broadcasts) per 16 FMAs, where two calls of <see cref="RunNarrow"/> would issue 10 per
    /// 8. Attention with a 32-wide value head (dv = 2 vectors) runs its whole P V product on it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunTwo(int k, float* a, nint aRow, nint aCol, float* b, nint ldb, float* c, nint ldc, float* scale)
    {
        int w = TS.Count;
        TV zero = TS.Broadcast(0f);
        TV c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero, c30 = zero, c31 = zero;
        TV c40 = zero, c41 = zero, c50 = zero, c51 = zero, c60 = zero, c61 = zero, c70 = zero, c71 = zero;
        for (int t = 0; t < k; t++)
        {
            TV b0 = TS.Load(ref b[0]);
            TV b1 = TS.Load(ref b[w]);
            TV x = TS.Broadcast(a[0]);
            c00 = TS.MultiplyAdd(x, b0, c00);
            c01 = TS.MultiplyAdd(x, b1, c01);
            x = TS.Broadcast(a[aRow]);
            c10 = TS.MultiplyAdd(x, b0, c10);
            c11 = TS.MultiplyAdd(x, b1, c11);
            x = TS.Broadcast(a[2 * aRow]);
            c20 = TS.MultiplyAdd(x, b0, c20);
            c21 = TS.MultiplyAdd(x, b1, c21);
            x = TS.Broadcast(a[3 * aRow]);
            c30 = TS.MultiplyAdd(x, b0, c30);
            c31 = TS.MultiplyAdd(x, b1, c31);
            x = TS.Broadcast(a[4 * aRow]);
            c40 = TS.MultiplyAdd(x, b0, c40);
            c41 = TS.MultiplyAdd(x, b1, c41);
            x = TS.Broadcast(a[5 * aRow]);
            c50 = TS.MultiplyAdd(x, b0, c50);
            c51 = TS.MultiplyAdd(x, b1, c51);
            x = TS.Broadcast(a[6 * aRow]);
            c60 = TS.MultiplyAdd(x, b0, c60);
            c61 = TS.MultiplyAdd(x, b1, c61);
            x = TS.Broadcast(a[7 * aRow]);
            c70 = TS.MultiplyAdd(x, b0, c70);
            c71 = TS.MultiplyAdd(x, b1, c71);
            a += aCol;
            b += ldb;
        }

        WriteTwo(c, scale, 0, c00, c01);
        WriteTwo(c + ldc, scale, 1, c10, c11);
        WriteTwo(c + (2 * ldc), scale, 2, c20, c21);
        WriteTwo(c + (3 * ldc), scale, 3, c30, c31);
        WriteTwo(c + (4 * ldc), scale, 4, c40, c41);
        WriteTwo(c + (5 * ldc), scale, 5, c50, c51);
        WriteTwo(c + (6 * ldc), scale, 6, c60, c61);
        WriteTwo(c + (7 * ldc), scale, 7, c70, c71);
    }

    /// <summary>The one-vector-wide form, for 4 rows (<see cref="Rows"/>) and the last columns of a width that is not a multiple of four vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunNarrow(int k, float* a, nint aRow, nint aCol, float* b, nint ldb, float* c, nint ldc, float* scale)
    {
        TV c0 = TS.Broadcast(0f), c1 = c0, c2 = c0, c3 = c0;
        float* a0 = a, a1 = a + aRow, a2 = a1 + aRow, a3 = a2 + aRow;
        for (int t = 0; t < k; t++)
        {
            TV x = TS.Load(ref b[0]);
            c0 = TS.MultiplyAdd(TS.Broadcast(*a0), x, c0);
            c1 = TS.MultiplyAdd(TS.Broadcast(*a1), x, c1);
            c2 = TS.MultiplyAdd(TS.Broadcast(*a2), x, c2);
            c3 = TS.MultiplyAdd(TS.Broadcast(*a3), x, c3);
            a0 += aCol;
            a1 += aCol;
            a2 += aCol;
            a3 += aCol;
            b += ldb;
        }

        WriteOne(c, scale, 0, c0);
        WriteOne(c + ldc, scale, 1, c1);
        WriteOne(c + (2 * ldc), scale, 2, c2);
        WriteOne(c + (3 * ldc), scale, 3, c3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Write(float* c, float* scale, int r, TV x0, TV x1, TV x2, TV x3)
    {
        int w = TS.Count;
        WriteOne(c, scale, r, x0);
        WriteOne(c + w, scale, r, x1);
        WriteOne(c + (2 * w), scale, r, x2);
        WriteOne(c + (3 * w), scale, r, x3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteTwo(float* c, float* scale, int r, TV x0, TV x1)
    {
        WriteOne(c, scale, r, x0);
        WriteOne(c + TS.Count, scale, r, x1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteOne(float* c, float* scale, int r, TV x)
    {
        TS.Store(scale == null ? x : TS.MultiplyAdd(TS.Broadcast(scale[r]), TS.Load(ref c[0]), x), ref c[0]);
    }
}
