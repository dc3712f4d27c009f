using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 5, deliverables 3 and 6: the Khatri–Rao polynomial method against brute force and the exact oracle.</summary>
public class TensorPolynomialTests
{
    private static float[] Uniform(long count, int seed, float bound) => Data.Uniform(count, seed, bound);

    private static (float[] Q, ReadOnlyMemory<float>[] K, ReadOnlyMemory<float>[] V) Inputs(TensorAttentionShape s, int seed, float bound)
    {
        var k = new ReadOnlyMemory<float>[s.KeyMatrices];
        var v = new ReadOnlyMemory<float>[s.KeyMatrices];
        for (int t = 0; t < s.KeyMatrices; t++)
        {
            k[t] = Uniform(s.KeyLength, seed + 1 + t, bound);
            v[t] = Uniform(s.ValueLength, seed + 11 + t, 1.5f);
        }

        return (Uniform(s.QueryLength, seed, bound), k, v);
    }

    /// <summary>Tensor attention with weights P(s &lt;q, k1 o ...&gt;) for every visible tuple, in double.</summary>
    private static double[] BruteForce(float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v, TensorAttentionShape s, double scale, ExpPolynomial p, bool causal)
    {
        int d = s.HeadDim, dv = s.ValueDim, m = s.KeyMatrices, nk = s.KeyCount;
        var output = new double[s.OutputLength];
        for (int h = 0; h < s.HeadCount; h++)
        {
            for (int i = 0; i < s.QueryCount; i++)
            {
                int limit = causal ? Math.Clamp(i + 1 + nk - s.QueryCount, 0, nk) : nk;
                double total = 0;
                double[] acc = new double[dv];
                int tuples = (int)Math.Pow(limit, m);
                for (int tuple = 0; tuple < tuples; tuple++)
                {
                    double[] product = [.. Enumerable.Range(0, d).Select(l => (double)q[(((h * s.QueryCount) + i) * d) + l])];
                    double[] value = [.. Enumerable.Repeat(1.0, dv)];
                    int rest = tuple;
                    for (int t = 0; t < m; t++)
                    {
                        int j = rest % limit;
                        rest /= limit;
                        for (int l = 0; l < d; l++)
                        {
                            product[l] *= k[t].Span[(((h * nk) + j) * d) + l];
                        }

                        for (int c = 0; c < dv; c++)
                        {
                            value[c] *= v[t].Span[(((h * nk) + j) * dv) + c];
                        }
                    }

                    double w = p.Evaluate(scale * product.Sum());
                    total += w;
                    for (int c = 0; c < dv; c++)
                    {
                        acc[c] += w * value[c];
                    }
                }

                for (int c = 0; c < dv; c++)
                {
                    output[(((h * s.QueryCount) + i) * dv) + c] = limit == 0 ? 0 : acc[c] / total;
                }
            }
        }

        return output;
    }

    [Theory]
    [InlineData(3, false, 20, 20)]
    [InlineData(3, true, 150, 150)] // more than one 128-row block
    [InlineData(3, true, 30, 45)]
    [InlineData(3, true, 45, 30)]
    [InlineData(4, false, 9, 9)]
    [InlineData(4, true, 9, 9)]
    public void Factorised_result_equals_brute_force_polynomial_tensor_attention(int order, bool causal, int nq, int nk)
    {
        var shape = new TensorAttentionShape(2, nq, nk, 3, 2, order);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, order + nq, 1f);
        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = TensorAttention.ComputePolynomial(q, k, v, shape, output, new PolynomialAttentionOptions { Degree = 5, Scale = 0.4f, Causal = causal });
        Assert.Equal(MonomialFeatures.Rank(3, 5), certificate.Rank);
        double[] expected = BruteForce(q, k, v, shape, 0.4, ExpPolynomial.OfDegree(certificate.Range, 5), causal);
        for (int i = 0; i < output.Length; i++)
        {
            Assert.Equal(expected[i], output[i], 1e-5);
        }
    }

    [Theory]
    [InlineData(4, 1.0f, 1e-3, false)]
    [InlineData(4, 1.0f, 1e-6, true)]
    [InlineData(2, 1.4f, 1e-4, false)]
    [InlineData(6, 0.8f, 1e-2, true)]
    public void Measured_error_never_exceeds_the_certificate(int d, float bound, double eps, bool causal)
    {
        var shape = new TensorAttentionShape(2, 40, 40, d, 3);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, d, bound);
        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = TensorAttention.ComputePolynomial(q, k, v, shape, output, new PolynomialAttentionOptions { RelativeError = eps, Causal = causal });
        Assert.True(certificate.PolynomialRelativeError <= eps);
        var exact = new double[shape.OutputLength];
        ReferenceTensorAttention.Compute(q, k, v, shape, exact, new TensorAttentionOptions { Causal = causal });
        double worst = Tolerance.MaxAbsError(output, exact);
        Assert.True(worst <= certificate.OutputBound, $"error {worst:E3} > certificate {certificate.OutputBound:E3}");

        // R really bounds every score.
        double s = 1.0 / d, max = 0;
        for (int i = 0; i < 40; i++)
        {
            for (int j1 = 0; j1 < 40; j1++)
            {
                for (int j2 = 0; j2 < 40; j2++)
                {
                    max = Math.Max(max, Math.Abs(s * Enumerable.Range(0, d).Sum(l => (double)q[(i * d) + l] * k[0].Span[(j1 * d) + l] * k[1].Span[(j2 * d) + l])));
                }
            }
        }

        Assert.True(max <= certificate.Range);
    }

    [Fact]
    public void Order_2_equals_the_ordinary_polynomial_method()
    {
        var shape = new TensorAttentionShape(1, 300, 300, 4, 3, Order: 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 77, 1f);
        var tensor = new float[shape.OutputLength];
        var plain = new float[shape.OutputLength];
        var options = new PolynomialAttentionOptions { Scale = 0.25f, Degree = 4 };
        TensorAttention.ComputePolynomial(q, k, v, shape, tensor, options);
        PolynomialAttention.Compute(q, k[0].Span, v[0].Span, new AttentionShape(1, 1, 300, 300, 4, 3), plain, options);
        for (int i = 0; i < plain.Length; i++)
        {
            Assert.Equal(plain[i], tensor[i], 1e-6f);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Output_bits_do_not_depend_on_thread_count(bool causal)
    {
        var shape = new TensorAttentionShape(3, 1500, 2100, 3, 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 5, 1f);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        TensorAttention.ComputePolynomial(q, k, v, shape, one, new PolynomialAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 1 });
        TensorAttention.ComputePolynomial(q, k, v, shape, two, new PolynomialAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 2 });
        Assert.Equal(one, two);
    }

    [Fact]
    public void Unbounded_entries_are_refused_with_the_documented_error()
    {
        var shape = new TensorAttentionShape(1, 10, 10, 16, 2);
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(shape, 1, 6f);
        var ex = Assert.ThrowsAny<ArgumentOutOfRangeException>(() => TensorAttention.ComputePolynomial(q, k, v, shape, new float[shape.OutputLength], new PolynomialAttentionOptions { RelativeError = 1e-6 }));
        Assert.Contains("polynomial", ex.Message, StringComparison.OrdinalIgnoreCase);
    }
}
