using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FastAttention.Polynomial;

/// <summary>
/// A factorisation of attention weights, <c>w(q, k) = sum_a W_a f_a(q) f_a(k)</c>, as the factorised
/// engine (<see cref="FactorisedAttention"/>) consumes it: features are produced for a block of
/// <see cref="FactorisedAttention.Block"/> rows at once, feature-major (<c>features[a * Block + j]</c>),
/// so every feature is one vector operation across the block's rows. The weights W live with the
/// engine's caller; <see cref="PairWeight"/> is the same w evaluated directly for one pair (the
/// causal path's diagonal blocks use it).
/// </summary>
internal abstract unsafe partial class FeatureMap(int dimension, int count, int embeddingSize, int[] degree)
{
    /// <summary>d, the length of an input row.</summary>
    public int Dimension { get; } = dimension;

    /// <summary>r, the number of features.</summary>
    public int Count { get; } = count;

    /// <summary>r rounded up to the engine's feature tile (4); the padding features are zero.</summary>
    public int PaddedCount => (Count + 3) / 4 * 4;

    /// <summary>Doubles per row of <see cref="Embed"/>'s output.</summary>
    public int EmbeddingSize { get; } = embeddingSize;

    /// <summary>The total degree of each feature in its input (features of input x times c are c^degree times those of x).</summary>
    public int[] Degree { get; } = degree;

    /// <summary>Doubles of scratch <see cref="Evaluate"/> needs.</summary>
    public abstract long ScratchDoubles { get; }

    /// <summary>
    /// Features of rows <c>0 .. count</c> of <paramref name="rows"/> (row stride d), each input scaled by
    /// <paramref name="inputScale"/>, into <c>features[a * Block + j]</c> for <c>a &lt; Count</c>; rows past
    /// <paramref name="count"/> are evaluated at zero input.
    /// </summary>
    public abstract void Evaluate(float* rows, int count, double inputScale, double* features, double* scratch);

    /// <summary>A per-row summary from which <see cref="PairWeight"/> is cheap (the row itself, or its sketch).</summary>
    public abstract void Embed(float* row, double* embedding);

    /// <summary>w(q, k) from two embeddings, equal in exact arithmetic to the weighted feature product: a function of their dot product.</summary>
    public double PairWeight(double* query, double* key)
    {
        double dot = 0;
        for (int l = 0; l < EmbeddingSize; l++)
        {
            dot += query[l] * key[l];
        }

        Span<double> w = [dot];
        WeightsOfDots(w);
        return w[0];
    }

    /// <summary>Turns dot products of embeddings into weights, in place (vectorised along the span).</summary>
    public abstract void WeightsOfDots(Span<double> dots);

    /// <summary>w(q, k) for one pair of rows (slow; for tests and checks).</summary>
    public double Weight(ReadOnlySpan<float> query, ReadOnlySpan<float> key)
    {
        double[] eq = new double[EmbeddingSize], ek = new double[EmbeddingSize];
        fixed (float* q = query, k = key)
        fixed (double* pq = eq, pk = ek)
        {
            Embed(q, pq);
            Embed(k, pk);
            return PairWeight(pq, pk);
        }
    }

    /// <summary>The block's rows transposed to <c>[d][Block]</c> doubles times <paramref name="scale"/>; zero past <paramref name="count"/>.</summary>
    protected static void Transpose(float* rows, int count, int d, double scale, double* transposed)
    {
        const int Block = FactorisedAttention.Block;
        for (int l = 0; l < d; l++)
        {
            double* line = transposed + ((long)l * Block);
            for (int j = 0; j < count; j++)
            {
                line[j] = rows[((long)j * d) + l] * scale;
            }

            new Span<double>(line + count, Block - count).Clear();
        }
    }

    /// <summary>target[0 .. Block) += a[..] * b[..], eight doubles a vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected static void MultiplyAddRows(double* a, double* b, double* target)
    {
        for (int j = 0; j < FactorisedAttention.Block; j += 8)
        {
            Vector512.Store(Vector512.FusedMultiplyAdd(Vector512.Load(a + j), Vector512.Load(b + j), Vector512.Load(target + j)), target + j);
        }
    }

    /// <summary>target[0 .. Block) = a[..] * b[..], eight doubles a vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected static void MultiplyRows(double* a, double* b, double* target)
    {
        for (int j = 0; j < FactorisedAttention.Block; j += 8)
        {
            Vector512.Store(Vector512.Load(a + j) * Vector512.Load(b + j), target + j);
        }
    }
}

/// <summary>
/// The monomial features of docs/algorithms.md §2 for a polynomial <c>P(s q.k) = sum_t c_t (s q.k)^t</c>:
/// <c>f_alpha(x) = x^alpha</c>, each the product of its parent and one coordinate (one vector multiply
/// per feature per 8 rows). The weight of alpha is <c>c_|alpha| (|alpha|!/alpha!) s^|alpha|</c> (see
/// <see cref="Weights"/>); an even power <c>(s q.k)^p</c> is the polynomial <c>x^p</c>.
/// </summary>
internal sealed unsafe partial class MonomialFeatureMap : FeatureMap
{
    private readonly int[] _parent;
    private readonly int[] _coordinate;
    private readonly double[] _polynomial;
    private readonly double _scale;

    /// <summary>Features of all monomials of degree at most the polynomial's.</summary>
    /// <param name="monomials">The monomials (degree = the polynomial's).</param>
    /// <param name="polynomial">c_0 .. c_g, monomial in x = s q.k.</param>
    /// <param name="scale">s.</param>
    public MonomialFeatureMap(MonomialFeatures monomials, IReadOnlyList<double> polynomial, double scale)
        : base(monomials.Dimension, monomials.Count, monomials.Dimension, monomials.TotalDegree)
    {
        Monomials = monomials;
        _parent = monomials.Parent.ToArray();
        _coordinate = monomials.Coordinate.ToArray();
        _polynomial = [.. polynomial];
        _scale = scale;
    }

    public MonomialFeatures Monomials { get; }

    /// <summary>The block's scaled inputs, x [d][Block] (the backward reads them after <see cref="Evaluate"/>).</summary>
    public override long ScratchDoubles => (long)Dimension * FactorisedAttention.Block;

    /// <summary>W_alpha = c_|alpha| (|alpha|!/alpha!) s^|alpha|.</summary>
    public double[] Weights()
    {
        double[] w = new double[Count];
        for (int a = 0; a < Count; a++)
        {
            int t = Monomials.TotalDegree[a];
            w[a] = _polynomial[t] * Monomials.Multinomial[a] * Math.Pow(_scale, t);
        }

        return w;
    }

    public override void Evaluate(float* rows, int count, double inputScale, double* features, double* scratch)
    {
        const int Block = FactorisedAttention.Block;
        Transpose(rows, count, Dimension, inputScale, scratch);
        new Span<double>(features, Block).Fill(1);
        for (int a = 1; a < Count; a++)
        {
            MultiplyRows(features + ((long)_parent[a] * Block), scratch + ((long)_coordinate[a] * Block), features + ((long)a * Block));
        }
    }

    public override void Embed(float* row, double* embedding)
    {
        for (int l = 0; l < Dimension; l++)
        {
            embedding[l] = row[l];
        }
    }

    /// <summary>P(s dot) by Horner's rule along the span.</summary>
    public override void WeightsOfDots(Span<double> dots)
    {
        System.Numerics.Tensors.TensorPrimitives.Multiply(dots, _scale, dots);
        Span<double> x = dots.Length <= 256 ? stackalloc double[dots.Length] : new double[dots.Length];
        dots.CopyTo(x);
        dots.Fill(_polynomial[^1]);
        for (int t = _polynomial.Length - 2; t >= 0; t--)
        {
            System.Numerics.Tensors.TensorPrimitives.FusedMultiplyAdd(dots, x, _polynomial[t], dots);
        }
    }
}

/// <summary>
/// PolySketchFormer's non-negative sketch of degree-4 polynomial attention (docs/algorithms.md §2, "reality
/// check"): <c>phi(x) = (x S1) o (x S2) / sqrt(m)</c> with Gaussian <c>S1, S2</c> (d x m, seeded) is an
/// unbiased sketch of degree 2, <c>E[phi(q).phi(k)] = (q.k)^2</c>; its square
/// <c>(phi(q).phi(k))^2 = sum_{a &lt;= b} (2 - [a = b]) phi_a phi_b (q) phi_a phi_b (k)</c> is never
/// negative and approximates <c>(q.k)^4</c>, with <c>m (m + 1) / 2</c> features.
/// </summary>
internal sealed unsafe partial class SketchFeatureMap : FeatureMap
{
    private readonly double[] _s1;
    private readonly double[] _s2;
    private readonly int _m;
    private readonly double _scale;

    public SketchFeatureMap(int dimension, int sketchSize, long seed, double scale)
        : base(dimension, sketchSize * (sketchSize + 1) / 2, sketchSize, Enumerable.Repeat(4, sketchSize * (sketchSize + 1) / 2).ToArray())
    {
        _m = sketchSize;
        _scale = scale;
        var random = new Random(unchecked((int)(seed ^ (seed >> 32))));
        _s1 = Gaussians(random, dimension * sketchSize);
        _s2 = Gaussians(random, dimension * sketchSize);
    }

    /// <summary>x [d][Block], x S1 and x S2 [m][Block] each, phi [m][Block], and phi's gradient [m][Block] for the backward.</summary>
    public override long ScratchDoubles => ((long)Dimension + (4L * _m)) * FactorisedAttention.Block;

    /// <summary>Feature weights for <c>(s^4) (phi(q).phi(k))^2</c>: 1 on the diagonal pairs, 2 off it, times s^4 / m^2.</summary>
    public double[] Weights()
    {
        double factor = Math.Pow(_scale, 4) / ((double)_m * _m);
        double[] w = new double[Count];
        int index = 0;
        for (int a = 0; a < _m; a++)
        {
            for (int b = a; b < _m; b++)
            {
                w[index++] = (a == b ? 1 : 2) * factor;
            }
        }

        return w;
    }

    public override void Evaluate(float* rows, int count, double inputScale, double* features, double* scratch)
    {
        const int Block = FactorisedAttention.Block;
        double* x = scratch;
        double* u1 = x + ((long)Dimension * Block);
        double* u2 = u1 + ((long)_m * Block);
        double* phi = u2 + ((long)_m * Block); // kept apart from x S1 and x S2, which the backward needs too
        Transpose(rows, count, Dimension, inputScale, x);
        Project(x, _s1, u1);
        Project(x, _s2, u2);
        for (int a = 0; a < _m; a++)
        {
            MultiplyRows(u1 + ((long)a * Block), u2 + ((long)a * Block), phi + ((long)a * Block)); // phi_a (unnormalised)
        }

        int index = 0;
        for (int a = 0; a < _m; a++)
        {
            for (int b = a; b < _m; b++)
            {
                MultiplyRows(phi + ((long)a * Block), phi + ((long)b * Block), features + ((long)index++ * Block));
            }
        }
    }

    public override void Embed(float* row, double* embedding)
    {
        for (int a = 0; a < _m; a++)
        {
            double p1 = 0, p2 = 0;
            for (int l = 0; l < Dimension; l++)
            {
                p1 += row[l] * _s1[(l * _m) + a];
                p2 += row[l] * _s2[(l * _m) + a];
            }

            embedding[a] = p1 * p2;
        }
    }

    /// <summary>(phi(q).phi(k))^2 s^4 / m^2 along the span.</summary>
    public override void WeightsOfDots(Span<double> dots)
    {
        double s2 = _scale * _scale;
        System.Numerics.Tensors.TensorPrimitives.Multiply(dots, dots, dots);
        System.Numerics.Tensors.TensorPrimitives.Multiply(dots, s2 * s2 / ((double)_m * _m), dots);
    }

    /// <summary>u[a][j] = sum_l x[l][j] S[l][a].</summary>
    private void Project(double* x, double[] s, double* u)
    {
        const int Block = FactorisedAttention.Block;
        for (int a = 0; a < _m; a++)
        {
            double* target = u + ((long)a * Block);
            for (int j = 0; j < Block; j += 8)
            {
                Vector512<double> acc = Vector512<double>.Zero;
                for (int l = 0; l < Dimension; l++)
                {
                    acc = Vector512.FusedMultiplyAdd(Vector512.Load(x + ((long)l * Block) + j), Vector512.Create(s[(l * _m) + a]), acc);
                }

                Vector512.Store(acc, target + j);
            }
        }
    }

    /// <summary>S1, d x m row-major (the float64 reference rebuilds the sketch from it).</summary>
    public ReadOnlySpan<double> Sketch1 => _s1;

    /// <summary>S2, d x m row-major.</summary>
    public ReadOnlySpan<double> Sketch2 => _s2;

    /// <summary>m.</summary>
    public int SketchSize => _m;

    private static double[] Gaussians(Random random, int count)
    {
        double[] g = new double[count];
        SeededGaussian.Fill(random, g);
        return g;
    }
}
