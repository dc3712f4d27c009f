using System.Runtime.CompilerServices;
using FastAttention.Polynomial;

namespace FastAttention.Leverage;

/// <summary>
/// The two O(n d^2) passes of leverage scores, in double on the register-tiled products of the factorised engine
/// (<see cref="FactorisedKernel"/>: Vector512, Vector256 or scalar), instead of one axpy or dot per row:
/// <list type="number">
/// <item>the Gram matrix <c>G = sum_j w_j k_j k_j^T</c>: rows in blocks of <see cref="FactorisedAttention.Block"/>,
/// packed transposed as <c>F = K_block^T</c> (<c>[dPad][Block]</c>) and <c>VT = (diag(w) K_block)^T</c>, then
/// <c>G += F VT^T</c> by the key product (dot products of 4 x 3 feature pairs along the block);</item>
/// <item>the scores <c>tau_j = ||k_j W||^2</c>: <c>Y^T = W^T F</c> by the query product (W is <c>d x r</c>), then the
/// column norms of <c>Y^T</c>.</item>
/// </list>
/// Both run in double (the float GEMM would round the scores to about 1e-6 and move keys across a threshold or the
/// top-k boundary); every sum runs in an order fixed by the input, so the bits do not depend on the thread count.
/// </summary>
internal static unsafe class LeverageProducts
{
    private const int Block = FactorisedAttention.Block, ColumnTile = FactorisedAttention.ColumnTile;

    /// <summary>
    /// The Gram matrix (row-major d x d, symmetric) of <paramref name="count"/> rows of <paramref name="keys"/>
    /// (<c>[count, d]</c>), each weighted by <paramref name="weights"/> (null pointer: 1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // called a few times per head: tier-0 code would dominate
    public static double[] Gram(float* keys, int d, int count, double* weights)
    {
        int rPad = RoundUp(d, 4), cPad = RoundUp(d, ColumnTile);
        double[] f = new double[(long)rPad * Block], vt = new double[(long)cPad * Block], state = new double[(long)rPad * cPad];
        FactorisedKernel kernel = FactorisedKernel.Default;
        fixed (double* pf = f, pv = vt, ps = state)
        {
            for (int j0 = 0; j0 < count; j0 += Block)
            {
                int m = Math.Min(Block, count - j0);
                Pack(keys + ((long)j0 * d), d, m, pf);
                // VT = F with each row's weight (rows past m stay 0 in F, so they contribute nothing either way).
                for (int a = 0; a < d; a++)
                {
                    double* row = pf + ((long)a * Block), target = pv + ((long)a * Block);
                    for (int j = 0; j < Block; j++)
                    {
                        target[j] = weights == null || j >= m ? row[j] : row[j] * weights[j0 + j];
                    }
                }

                kernel.KeyProduct(pf, rPad, pv, cPad, ps);
            }
        }

        // The upper triangle is mirrored, so G is exactly symmetric (with weights, k_a (w k_b) and k_b (w k_a) round apart).
        double[] gram = new double[d * d];
        for (int a = 0; a < d; a++)
        {
            for (int b = a; b < d; b++)
            {
                gram[(a * d) + b] = gram[(b * d) + a] = state[((long)a * cPad) + b];
            }
        }

        return gram;
    }

    /// <summary>
    /// <c>scores[j] = ||k_j W||^2</c> for the <paramref name="count"/> rows of <paramref name="keys"/>, with
    /// <paramref name="projection"/> W laid out <c>[rPad][cPad]</c> by <see cref="PadProjection"/>, clamped to [0, 1] when <paramref name="clamp"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // called a few times per head: tier-0 code would dominate
    public static void Scores(float* keys, int d, int count, double[] projection, int r, Span<double> scores, bool clamp)
    {
        int rPad = RoundUp(d, 4), cPad = RoundUp(r, ColumnTile);
        double[] f = new double[(long)rPad * Block], ot = new double[(long)cPad * Block];
        FactorisedKernel kernel = FactorisedKernel.Default;
        fixed (double* pf = f, pm = projection, po = ot)
        {
            for (int j0 = 0; j0 < count; j0 += Block)
            {
                int m = Math.Min(Block, count - j0);
                Pack(keys + ((long)j0 * d), d, m, pf);
                kernel.QueryProduct(pf, rPad, pm, cPad, po);

                // tau_j = sum_c Y[j][c]^2, summed over c in order. Plain loops here and above rather than TensorPrimitives: this
                // runs a few times per head, and the optimised code must not wait for tiering to reach the callee.
                for (int j = 0; j < m; j++)
                {
                    double tau = 0;
                    for (int c = 0; c < r; c++)
                    {
                        double y = po[((long)c * Block) + j];
                        tau += y * y;
                    }

                    scores[j0 + j] = clamp ? Math.Clamp(tau, 0, 1) : tau;
                }
            }
        }
    }

    /// <summary>W (row-major d x r) zero-padded to <c>[RoundUp(d, 4)][RoundUp(r, 3)]</c>, the query product's layout.</summary>
    public static double[] PadProjection(double[] w, int d, int r)
    {
        int rPad = RoundUp(d, 4), cPad = RoundUp(r, ColumnTile);
        double[] padded = new double[(long)rPad * cPad];
        for (int l = 0; l < d; l++)
        {
            w.AsSpan(l * r, r).CopyTo(padded.AsSpan(l * cPad, r));
        }

        return padded;
    }

    /// <summary>F[a][j] = k_j[a] for the block's m rows; zero beyond (rows past m, features past d up to the padding).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // called a few times per head: tier-0 code would dominate
    private static void Pack(float* rows, int d, int m, double* f)
    {
        new Span<double>(f, RoundUp(d, 4) * Block).Clear();
        for (int j = 0; j < m; j++)
        {
            float* k = rows + ((long)j * d);
            for (int a = 0; a < d; a++)
            {
                f[((long)a * Block) + j] = k[a];
            }
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;
}
