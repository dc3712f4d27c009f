using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace FastAttention.Polynomial;

/// <summary>
/// The feature maps' reverse mode (docs/algorithms.md §2.8): the Jacobian-transpose products the factorised
/// backward needs, <c>dx = J_f(x)^T df</c> for a block of rows, and the derivative of the direct pair weight the
/// causal diagonal blocks use.
/// </summary>
internal abstract unsafe partial class FeatureMap
{
    /// <summary>
    /// Reverse mode through <see cref="Evaluate"/>: called right after it, with the same <paramref name="features"/> and
    /// <paramref name="scratch"/>, and <c>adjoint[a * Block + j]</c> = dL/d feature a of row j (destroyed), writes
    /// <c>gradient[l * Block + j]</c> = dL/d x_l of row j, x being the input as scaled by Evaluate's inputScale.
    /// </summary>
    public abstract void Backpropagate(double* features, double* adjoint, double* scratch, double* gradient);

    /// <summary>Turns dot products of embeddings into dw/d(dot) of <see cref="WeightsOfDots"/>, in place.</summary>
    public abstract void DerivativesOfDots(Span<double> dots);

    /// <summary>rowGradient[l] += sum_e (d embedding_e / d row_l) embeddingGradient[e]: the transpose of <see cref="Embed"/>'s Jacobian.</summary>
    public abstract void EmbeddingBackward(float* row, double* embeddingGradient, double* rowGradient);
}

/// <summary>Reverse mode of the monomial features: each <c>x^alpha = x^parent x_l</c> sends its adjoint to its parent and to x_l.</summary>
internal sealed unsafe partial class MonomialFeatureMap
{
    /// <summary>
    /// Walks the monomials from the highest index down (every child follows its parent, so a feature's adjoint is
    /// complete when it is reached): <c>adj[parent] += adj[a] x_l</c>, <c>dx_l += adj[a] x^parent</c>. The sum over
    /// the monomials containing x_l is <c>J^T df</c>, with d/dx_l x^alpha = alpha_l x^(alpha - e_l); O(r) per row.
    /// </summary>
    public override void Backpropagate(double* features, double* adjoint, double* scratch, double* gradient)
    {
        const int Block = FactorisedAttention.Block;
        new Span<double>(gradient, Dimension * Block).Clear();
        for (int a = Count - 1; a >= 1; a--)
        {
            double* adj = adjoint + ((long)a * Block);
            int parent = _parent[a], l = _coordinate[a];
            MultiplyAddRows(adj, features + ((long)parent * Block), gradient + ((long)l * Block));
            MultiplyAddRows(adj, scratch + ((long)l * Block), adjoint + ((long)parent * Block));
        }
    }

    /// <summary>d/d(dot) P(s dot) = s P'(s dot), by Horner's rule on P' along the span.</summary>
    public override void DerivativesOfDots(Span<double> dots)
    {
        TensorPrimitives.Multiply(dots, _scale, dots);
        Span<double> x = dots.Length <= 256 ? stackalloc double[dots.Length] : new double[dots.Length];
        dots.CopyTo(x);
        int g = _polynomial.Length - 1;
        dots.Fill(g * _polynomial[g]);
        for (int t = g - 1; t >= 1; t--)
        {
            TensorPrimitives.FusedMultiplyAdd(dots, x, t * _polynomial[t], dots);
        }

        TensorPrimitives.Multiply(dots, g >= 1 ? _scale : 0, dots);
    }

    /// <summary>The embedding is the row itself.</summary>
    public override void EmbeddingBackward(float* row, double* embeddingGradient, double* rowGradient)
    {
        for (int l = 0; l < Dimension; l++)
        {
            rowGradient[l] += embeddingGradient[l];
        }
    }
}

/// <summary>Reverse mode of the sketch: through the products <c>phi_a phi_b</c>, <c>phi = (x S1) o (x S2)</c>, and the projections.</summary>
internal sealed unsafe partial class SketchFeatureMap
{
    /// <summary>
    /// <c>dphi_a = sum_b adj[ab] phi_b</c> (the diagonal pair counts twice, as d phi_a^2 = 2 phi_a); then
    /// <c>d(x S1) = dphi o (x S2)</c>, <c>d(x S2) = dphi o (x S1)</c>, and <c>dx = S1 d(x S1) + S2 d(x S2)</c>.
    /// </summary>
    public override void Backpropagate(double* features, double* adjoint, double* scratch, double* gradient)
    {
        const int Block = FactorisedAttention.Block;
        long plane = (long)_m * Block;
        double* u1 = scratch + ((long)Dimension * Block), u2 = u1 + plane, phi = u2 + plane, dphi = phi + plane;
        new Span<double>(dphi, (int)plane).Clear();
        int index = 0;
        for (int a = 0; a < _m; a++)
        {
            for (int b = a; b < _m; b++)
            {
                double* adj = adjoint + ((long)index++ * Block);
                MultiplyAddRows(adj, phi + ((long)b * Block), dphi + ((long)a * Block));
                MultiplyAddRows(adj, phi + ((long)a * Block), dphi + ((long)b * Block));
            }
        }

        // phi's plane becomes d(x S1), dphi's d(x S2).
        for (int a = 0; a < _m; a++)
        {
            MultiplyRows(dphi + ((long)a * Block), u2 + ((long)a * Block), phi + ((long)a * Block));
            MultiplyRows(dphi + ((long)a * Block), u1 + ((long)a * Block), dphi + ((long)a * Block));
        }

        for (int l = 0; l < Dimension; l++)
        {
            double* target = gradient + ((long)l * Block);
            for (int j = 0; j < Block; j += 8)
            {
                Vector512<double> acc = Vector512<double>.Zero;
                for (int a = 0; a < _m; a++)
                {
                    acc = Vector512.FusedMultiplyAdd(Vector512.Load(phi + ((long)a * Block) + j), Vector512.Create(_s1[(l * _m) + a]), acc);
                    acc = Vector512.FusedMultiplyAdd(Vector512.Load(dphi + ((long)a * Block) + j), Vector512.Create(_s2[(l * _m) + a]), acc);
                }

                Vector512.Store(acc, target + j);
            }
        }
    }

    /// <summary>d/d(dot) of c dot^2 is 2 c dot, c = s^4 / m^2.</summary>
    public override void DerivativesOfDots(Span<double> dots)
    {
        double s2 = _scale * _scale;
        TensorPrimitives.Multiply(dots, 2 * s2 * s2 / ((double)_m * _m), dots);
    }

    /// <summary>embedding_a = (x S1)_a (x S2)_a, so row_l gets sum_a g_a (S1[l][a] (x S2)_a + S2[l][a] (x S1)_a).</summary>
    public override void EmbeddingBackward(float* row, double* embeddingGradient, double* rowGradient)
    {
        for (int a = 0; a < _m; a++)
        {
            double p1 = 0, p2 = 0;
            for (int l = 0; l < Dimension; l++)
            {
                p1 += row[l] * _s1[(l * _m) + a];
                p2 += row[l] * _s2[(l * _m) + a];
            }

            double g = embeddingGradient[a];
            for (int l = 0; l < Dimension; l++)
            {
                rowGradient[l] += g * ((_s1[(l * _m) + a] * p2) + (_s2[(l * _m) + a] * p1));
            }
        }
    }
}
