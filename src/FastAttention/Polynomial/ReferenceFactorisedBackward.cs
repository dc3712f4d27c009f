namespace FastAttention.Polynomial;

/// <summary>A pair weight w(q, k) and its gradient, evaluated directly in double (never through the features).</summary>
internal abstract class PairWeight
{
    /// <summary>w(q, k).</summary>
    public abstract double Weight(ReadOnlySpan<double> q, ReadOnlySpan<double> k);

    /// <summary>dq += factor dw/dq, dk += factor dw/dk.</summary>
    public abstract void AddGradient(ReadOnlySpan<double> q, ReadOnlySpan<double> k, double factor, Span<double> dq, Span<double> dk);

    protected static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double sum = 0;
        for (int l = 0; l < a.Length; l++)
        {
            sum += a[l] * b[l];
        }

        return sum;
    }
}

/// <summary>w = P(s q.k) = sum_t c_t (s q.k)^t; dw/dq = s P'(s q.k) k.</summary>
internal sealed class PolynomialPairWeight(IReadOnlyList<double> coefficients, double scale) : PairWeight
{
    public override double Weight(ReadOnlySpan<double> q, ReadOnlySpan<double> k)
    {
        double x = scale * Dot(q, k), sum = 0;
        for (int t = coefficients.Count - 1; t >= 0; t--)
        {
            sum = (sum * x) + coefficients[t];
        }

        return sum;
    }

    public override void AddGradient(ReadOnlySpan<double> q, ReadOnlySpan<double> k, double factor, Span<double> dq, Span<double> dk)
    {
        double x = scale * Dot(q, k), derivative = 0;
        for (int t = coefficients.Count - 1; t >= 1; t--)
        {
            derivative = (derivative * x) + (t * coefficients[t]);
        }

        double f = factor * scale * derivative;
        for (int l = 0; l < q.Length; l++)
        {
            dq[l] += f * k[l];
            dk[l] += f * q[l];
        }
    }
}

/// <summary>
/// The sketched weight w = c (phi(q).phi(k))^2, c = s^4 / m^2, phi_a(x) = (x S1)_a (x S2)_a (S1, S2 d x m row-major);
/// dw/dq = 2 c (phi(q).phi(k)) J_phi(q)^T phi(k), with J_phi^T g = S1 (g o x S2) + S2 (g o x S1).
/// </summary>
internal sealed class SketchPairWeight(double[] s1, double[] s2, int m, double scale) : PairWeight
{
    private readonly double _c = Math.Pow(scale, 4) / ((double)m * m);

    public override double Weight(ReadOnlySpan<double> q, ReadOnlySpan<double> k)
    {
        double dot = Dot(Phi(q).Phi, Phi(k).Phi);
        return _c * dot * dot;
    }

    public override void AddGradient(ReadOnlySpan<double> q, ReadOnlySpan<double> k, double factor, Span<double> dq, Span<double> dk)
    {
        (double[] pq, double[] q1, double[] q2) = Phi(q);
        (double[] pk, double[] k1, double[] k2) = Phi(k);
        double f = factor * 2 * _c * Dot(pq, pk);
        for (int l = 0; l < q.Length; l++)
        {
            for (int a = 0; a < m; a++)
            {
                dq[l] += f * pk[a] * ((s1[(l * m) + a] * q2[a]) + (s2[(l * m) + a] * q1[a]));
                dk[l] += f * pq[a] * ((s1[(l * m) + a] * k2[a]) + (s2[(l * m) + a] * k1[a]));
            }
        }
    }

    private (double[] Phi, double[] U1, double[] U2) Phi(ReadOnlySpan<double> x)
    {
        double[] phi = new double[m], u1 = new double[m], u2 = new double[m];
        for (int a = 0; a < m; a++)
        {
            for (int l = 0; l < x.Length; l++)
            {
                u1[a] += x[l] * s1[(l * m) + a];
                u2[a] += x[l] * s2[(l * m) + a];
            }

            phi[a] = u1[a] * u2[a];
        }

        return (phi, u1, u2);
    }
}

/// <summary>
/// The slow, obviously-correct float64 oracle of factorised attention and its backward: every pair weight computed
/// directly, O(nq nk) per head, the gradient by the textbook formulas (docs/algorithms.md §2.8):
/// <c>O_i = sum_j w_ij v_j / z_i</c>; <c>dw_ij = dO_i . (v_j - O_i) / z_i</c>; <c>dv_j += w_ij dO_i / z_i</c>;
/// <c>dq_i += dw_ij dw/dq</c>, <c>dk_j += dw_ij dw/dk</c>. Causal is bottom-right aligned; a row with z = 0 outputs 0.
/// </summary>
internal static class ReferenceFactorisedBackward
{
    /// <summary>The forward output, [batch, heads, nq, dv].</summary>
    public static double[] Forward(double[] q, double[] k, double[] v, AttentionShape shape, bool causal, PairWeight weight) =>
        Run(q, k, v, null, shape, causal, weight).Output;

    /// <summary>dL/dQ, dL/dK, dL/dV for dL/dO = <paramref name="outputGradient"/>.</summary>
    public static (double[] Query, double[] Key, double[] Value) Backward(double[] q, double[] k, double[] v, double[] outputGradient, AttentionShape shape, bool causal, PairWeight weight)
    {
        (_, double[] dq, double[] dk, double[] dv) = Run(q, k, v, outputGradient, shape, causal, weight);
        return (dq, dk, dv);
    }

    private static (double[] Output, double[] Query, double[] Key, double[] Value) Run(double[] q, double[] k, double[] v, double[]? dO, AttentionShape s, bool causal, PairWeight weight)
    {
        int d = s.HeadDim, dv = s.ValueDim, nq = s.QueryCount, nk = s.KeyCount, kvHeads = s.EffectiveKeyValueHeads, group = s.HeadCount / kvHeads;
        double[] output = new double[s.OutputLength], dq = new double[s.QueryLength], dk = new double[s.KeyLength], dvOut = new double[s.ValueLength];
        double[] w = new double[nk];
        for (int b = 0; b < s.BatchSize; b++)
        {
            for (int h = 0; h < s.HeadCount; h++)
            {
                long kv = ((long)b * kvHeads) + (h / group), head = ((long)b * s.HeadCount) + h;
                for (int i = 0; i < nq; i++)
                {
                    int qi = (int)(((head * nq) + i) * d), oi = (int)(((head * nq) + i) * dv);
                    int visible = causal ? (int)Math.Clamp(i + 1L + nk - nq, 0, nk) : nk;
                    double z = 0;
                    for (int j = 0; j < visible; j++)
                    {
                        w[j] = weight.Weight(q.AsSpan(qi, d), k.AsSpan((int)(((kv * nk) + j) * d), d));
                        z += w[j];
                    }

                    if (z == 0)
                    {
                        continue;
                    }

                    for (int j = 0; j < visible; j++)
                    {
                        for (int c = 0; c < dv; c++)
                        {
                            output[oi + c] += w[j] * v[(((kv * nk) + j) * dv) + c] / z;
                        }
                    }

                    if (dO is null)
                    {
                        continue;
                    }

                    double dOdotO = 0;
                    for (int c = 0; c < dv; c++)
                    {
                        dOdotO += dO[oi + c] * output[oi + c];
                    }

                    for (int j = 0; j < visible; j++)
                    {
                        int kj = (int)(((kv * nk) + j) * d), vj = (int)(((kv * nk) + j) * dv);
                        double dOdotV = 0;
                        for (int c = 0; c < dv; c++)
                        {
                            dOdotV += dO[oi + c] * v[vj + c];
                            dvOut[vj + c] += w[j] * dO[oi + c] / z;
                        }

                        weight.AddGradient(q.AsSpan(qi, d), k.AsSpan(kj, d), (dOdotV - dOdotO) / z, dq.AsSpan(qi, d), dk.AsSpan(kj, d));
                    }
                }
            }
        }

        return (output, dq, dk, dvOut);
    }
}
