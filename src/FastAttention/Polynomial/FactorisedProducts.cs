using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>
/// The two register-tiled products of the factorised engine, in one generic body per product over
/// <see cref="ISimdDouble{TV}"/> (512-bit, 256-bit, scalar): the key product <c>M += F [V | 1]</c> and the query
/// product <c>O^T = M^T F</c>, both along blocks of <see cref="FactorisedAttention.Block"/> rows (a multiple of every width).
/// </summary>
internal static unsafe class FactorisedProducts<TS, TV>
    where TS : struct, ISimdDouble<TV>
    where TV : struct
{
    private const int Block = FactorisedAttention.Block, FeatureChunk = FactorisedAttention.FeatureChunk, ColumnTile = FactorisedAttention.ColumnTile;

    /// <summary>state[a][c] += sum_j F[a][j] VT[c][j]: 4 features x 3 columns of dot products along the block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void KeyProduct(double* f, int rPad, double* vt, int cPad, double* state)
    {
        for (int a = 0; a < rPad; a += 4)
        {
            double* f0 = f + ((long)a * Block), f1 = f0 + Block, f2 = f1 + Block, f3 = f2 + Block;
            for (int c = 0; c < cPad; c += ColumnTile)
            {
                double* v0 = vt + ((long)c * Block), v1 = v0 + Block, v2 = v1 + Block;
                TV a00 = TS.Broadcast(0), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
                TV a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
                for (int j = 0; j < Block; j += TS.Count)
                {
                    TV x0 = TS.Load(v0 + j), x1 = TS.Load(v1 + j), x2 = TS.Load(v2 + j);
                    TV y = TS.Load(f0 + j);
                    a00 = TS.MultiplyAdd(y, x0, a00);
                    a01 = TS.MultiplyAdd(y, x1, a01);
                    a02 = TS.MultiplyAdd(y, x2, a02);
                    y = TS.Load(f1 + j);
                    a10 = TS.MultiplyAdd(y, x0, a10);
                    a11 = TS.MultiplyAdd(y, x1, a11);
                    a12 = TS.MultiplyAdd(y, x2, a12);
                    y = TS.Load(f2 + j);
                    a20 = TS.MultiplyAdd(y, x0, a20);
                    a21 = TS.MultiplyAdd(y, x1, a21);
                    a22 = TS.MultiplyAdd(y, x2, a22);
                    y = TS.Load(f3 + j);
                    a30 = TS.MultiplyAdd(y, x0, a30);
                    a31 = TS.MultiplyAdd(y, x1, a31);
                    a32 = TS.MultiplyAdd(y, x2, a32);
                }

                double* s = state + ((long)a * cPad) + c;
                s[0] += TS.SumAcross(a00);
                s[1] += TS.SumAcross(a01);
                s[2] += TS.SumAcross(a02);
                s += cPad;
                s[0] += TS.SumAcross(a10);
                s[1] += TS.SumAcross(a11);
                s[2] += TS.SumAcross(a12);
                s += cPad;
                s[0] += TS.SumAcross(a20);
                s[1] += TS.SumAcross(a21);
                s[2] += TS.SumAcross(a22);
                s += cPad;
                s[0] += TS.SumAcross(a30);
                s[1] += TS.SumAcross(a31);
                s[2] += TS.SumAcross(a32);
            }
        }
    }

    /// <summary>
    /// OT[c][i] = sum_a F[a][i] M[a][c]: 4 vectors of rows x 3 columns, broadcasting M. The features go in
    /// chunks of <see cref="FactorisedAttention.FeatureChunk"/> (256 KiB of F, in L2) so large r streams F from memory once,
    /// not once per column tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QueryProduct(double* f, int rPad, double* m, int cPad, double* ot)
    {
        int w = TS.Count;
        for (int a0 = 0; a0 < rPad; a0 += FeatureChunk)
        {
            int a1 = Math.Min(rPad, a0 + FeatureChunk);
            for (int i = 0; i < Block; i += 4 * w)
            {
                for (int c = 0; c < cPad; c += ColumnTile)
                {
                    double* o0 = ot + ((long)c * Block) + i, o1 = o0 + Block, o2 = o1 + Block;
                    TV a00 = TS.Broadcast(0), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
                    TV a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
                    if (a0 > 0)
                    {
                        a00 = TS.Load(o0);
                        a01 = TS.Load(o1);
                        a02 = TS.Load(o2);
                        a10 = TS.Load(o0 + w);
                        a11 = TS.Load(o1 + w);
                        a12 = TS.Load(o2 + w);
                        a20 = TS.Load(o0 + (2 * w));
                        a21 = TS.Load(o1 + (2 * w));
                        a22 = TS.Load(o2 + (2 * w));
                        a30 = TS.Load(o0 + (3 * w));
                        a31 = TS.Load(o1 + (3 * w));
                        a32 = TS.Load(o2 + (3 * w));
                    }

                    double* fa = f + ((long)a0 * Block) + i, ma = m + ((long)a0 * cPad) + c;
                    for (int a = a0; a < a1; a++, fa += Block, ma += cPad)
                    {
                        TV m0 = TS.Broadcast(ma[0]), m1 = TS.Broadcast(ma[1]), m2 = TS.Broadcast(ma[2]);
                        TV y = TS.Load(fa);
                        a00 = TS.MultiplyAdd(y, m0, a00);
                        a01 = TS.MultiplyAdd(y, m1, a01);
                        a02 = TS.MultiplyAdd(y, m2, a02);
                        y = TS.Load(fa + w);
                        a10 = TS.MultiplyAdd(y, m0, a10);
                        a11 = TS.MultiplyAdd(y, m1, a11);
                        a12 = TS.MultiplyAdd(y, m2, a12);
                        y = TS.Load(fa + (2 * w));
                        a20 = TS.MultiplyAdd(y, m0, a20);
                        a21 = TS.MultiplyAdd(y, m1, a21);
                        a22 = TS.MultiplyAdd(y, m2, a22);
                        y = TS.Load(fa + (3 * w));
                        a30 = TS.MultiplyAdd(y, m0, a30);
                        a31 = TS.MultiplyAdd(y, m1, a31);
                        a32 = TS.MultiplyAdd(y, m2, a32);
                    }

                    TS.Store(a00, o0);
                    TS.Store(a01, o1);
                    TS.Store(a02, o2);
                    TS.Store(a10, o0 + w);
                    TS.Store(a11, o1 + w);
                    TS.Store(a12, o2 + w);
                    TS.Store(a20, o0 + (2 * w));
                    TS.Store(a21, o1 + (2 * w));
                    TS.Store(a22, o2 + (2 * w));
                    TS.Store(a30, o0 + (3 * w));
                    TS.Store(a31, o1 + (3 * w));
                    TS.Store(a32, o2 + (3 * w));
                }
            }
        }
    }

    /// <summary>
    /// F[a][i] = sum_c M[a][c] G[c][i] (overwrites F): the backward's product that takes a state's gradient back to
    /// features, contracting over the short [V | 1] side. A 4-feature x 2-vector register tile, broadcasting M.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ExpandProduct(double* m, int rPad, double* g, int cPad, double* f)
    {
        int w = TS.Count;
        for (int a = 0; a < rPad; a += 4)
        {
            double* m0 = m + ((long)a * cPad), m1 = m0 + cPad, m2 = m1 + cPad, m3 = m2 + cPad;
            double* f0 = f + ((long)a * Block), f1 = f0 + Block, f2 = f1 + Block, f3 = f2 + Block;
            for (int i = 0; i < Block; i += 2 * w)
            {
                TV a00 = TS.Broadcast(0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
                for (int c = 0; c < cPad; c++)
                {
                    double* gc = g + ((long)c * Block) + i;
                    TV x0 = TS.Load(gc), x1 = TS.Load(gc + w);
                    TV y = TS.Broadcast(m0[c]);
                    a00 = TS.MultiplyAdd(y, x0, a00);
                    a01 = TS.MultiplyAdd(y, x1, a01);
                    y = TS.Broadcast(m1[c]);
                    a10 = TS.MultiplyAdd(y, x0, a10);
                    a11 = TS.MultiplyAdd(y, x1, a11);
                    y = TS.Broadcast(m2[c]);
                    a20 = TS.MultiplyAdd(y, x0, a20);
                    a21 = TS.MultiplyAdd(y, x1, a21);
                    y = TS.Broadcast(m3[c]);
                    a30 = TS.MultiplyAdd(y, x0, a30);
                    a31 = TS.MultiplyAdd(y, x1, a31);
                }

                TS.Store(a00, f0 + i);
                TS.Store(a01, f0 + i + w);
                TS.Store(a10, f1 + i);
                TS.Store(a11, f1 + i + w);
                TS.Store(a20, f2 + i);
                TS.Store(a21, f2 + i + w);
                TS.Store(a30, f3 + i);
                TS.Store(a31, f3 + i + w);
            }
        }
    }
}

/// <summary>One width of the factorised products: a registry name, whether this CPU runs it in hardware, and the two entry points.</summary>
internal sealed unsafe class FactorisedKernel(string name, Func<bool> isSupported,
    delegate*<double*, int, double*, int, double*, void> keyProduct, delegate*<double*, int, double*, int, double*, void> queryProduct,
    delegate*<double*, int, double*, int, double*, void> expandProduct)
{
    /// <summary>The widths, widest first; <see cref="Default"/> takes the first this CPU accelerates.</summary>
    public static IReadOnlyList<FactorisedKernel> All { get; } =
    [
        new("factorised-v512", () => SimdDouble512.IsSupported, &FactorisedProducts<SimdDouble512, Vector512<double>>.KeyProduct, &FactorisedProducts<SimdDouble512, Vector512<double>>.QueryProduct,
            &FactorisedProducts<SimdDouble512, Vector512<double>>.ExpandProduct),
        new("factorised-v256", () => SimdDouble256.IsSupported, &FactorisedProducts<SimdDouble256, Vector256<double>>.KeyProduct, &FactorisedProducts<SimdDouble256, Vector256<double>>.QueryProduct,
            &FactorisedProducts<SimdDouble256, Vector256<double>>.ExpandProduct),
        new("factorised-scalar", () => SimdDoubleScalar.IsSupported, &FactorisedProducts<SimdDoubleScalar, double>.KeyProduct, &FactorisedProducts<SimdDoubleScalar, double>.QueryProduct,
            &FactorisedProducts<SimdDoubleScalar, double>.ExpandProduct),
    ];

    /// <summary>The widest width this CPU runs in hardware (Vector512 where AVX-512 is, else Vector256, else scalar).</summary>
    public static FactorisedKernel Default { get; } = All.First(k => k.IsSupported());

    public string Name { get; } = name;

    public Func<bool> IsSupported { get; } = isSupported;

    /// <summary>state[a][c] += sum_j F[a][j] VT[c][j].</summary>
    public void KeyProduct(double* f, int rPad, double* vt, int cPad, double* state) => keyProduct(f, rPad, vt, cPad, state);

    /// <summary>OT[c][i] = sum_a F[a][i] M[a][c] (accumulating after the first feature chunk).</summary>
    public void QueryProduct(double* f, int rPad, double* m, int cPad, double* ot) => queryProduct(f, rPad, m, cPad, ot);

    /// <summary>F[a][i] = sum_c M[a][c] G[c][i] (the backward's state-to-features product; overwrites F).</summary>
    public void ExpandProduct(double* m, int rPad, double* g, int cPad, double* f) => expandProduct(m, rPad, g, cPad, f);
}
