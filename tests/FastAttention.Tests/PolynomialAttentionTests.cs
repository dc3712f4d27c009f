using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 4, deliverables 2–3 (first version: double-precision products, non-causal).</summary>
public class PolynomialAttentionTests
{
    private static float[] Uniform(long count, int seed, float bound) => Data.Uniform(count, seed, bound);

    [Theory]
    [InlineData(1, 4, 1)]
    [InlineData(3, 2, 2)]
    [InlineData(4, 5, 3)]
    [InlineData(8, 4, 2)]
    public void Feature_count_is_c_of_d_plus_g_and_features_reproduce_the_power_expansion(int d, int g, int seed)
    {
        var features = new MonomialFeatures(d, g, long.MaxValue);
        Assert.Equal(MonomialFeatures.Rank(d, g), features.Count);

        // sum over |alpha| = t of (t!/alpha!) q^alpha k^alpha = <q, k>^t, for every t <= g.
        float[] q = Uniform(d, seed, 1), k = Uniform(d, seed + 1, 1);
        double[] ones = [.. Enumerable.Repeat(1.0, features.Count)];
        double[] fq = new double[features.Count], fk = new double[features.Count];
        features.Evaluate(q, ones, fq);
        features.Evaluate(k, ones, fk);
        double dot = Enumerable.Range(0, d).Sum(l => (double)q[l] * k[l]);
        for (int t = 0; t <= g; t++)
        {
            double sum = 0;
            for (int a = 0; a < features.Count; a++)
            {
                if (features.TotalDegree[a] == t)
                {
                    sum += features.Multinomial[a] * fq[a] * fk[a];
                }
            }

            Assert.Equal(Math.Pow(dot, t), sum, 1e-12);
        }
    }

    [Fact]
    public void Size_is_the_fit_degree_and_its_feature_count_or_null_when_no_polynomial_reaches_eps()
    {
        (int Degree, long Rank)? size = PolynomialAttention.Size(1.5, 8, 1e-3);
        Assert.NotNull(size);
        int degree = ExpPolynomial.Fit(1.5, 1e-3).Degree;
        Assert.Equal(degree, size.Value.Degree);
        Assert.Equal(MonomialFeatures.Rank(8, degree), size.Value.Rank);
        Assert.True(PolynomialAttention.Size(1.5, 8, 1e-6)!.Value.Degree > degree); // tighter eps, higher degree
        Assert.Null(PolynomialAttention.Size(500, 8, 1e-3));                       // R far beyond any fit
    }

    [Fact]
    public void Factorised_result_equals_brute_force_polynomial_attention()
    {
        var shape = new AttentionShape(1, 2, 37, 53, 4, 3);
        float[] q = Uniform(shape.QueryLength, 1, 1), k = Uniform(shape.KeyLength, 2, 1), v = Uniform(shape.ValueLength, 3, 2);
        var output = new float[shape.OutputLength];
        var options = new PolynomialAttentionOptions { Scale = 0.25f, Degree = 5 };
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output, options);
        Assert.Equal(5, certificate.Degree);
        Assert.Equal(MonomialFeatures.Rank(4, 5), certificate.Rank);

        // Brute force: weights P(s q.k) for every pair, with the same polynomial.
        ExpPolynomial p = ExpPolynomial.OfDegree(certificate.Range, 5);
        for (int h = 0; h < 2; h++)
        {
            for (int i = 0; i < 37; i++)
            {
                double[] acc = new double[3];
                double sum = 0;
                for (int j = 0; j < 53; j++)
                {
                    double dot = 0;
                    for (int t = 0; t < 4; t++)
                    {
                        dot += (double)q[(h * 37 * 4) + (i * 4) + t] * k[(h * 53 * 4) + (j * 4) + t];
                    }

                    double w = p.Evaluate(0.25 * dot);
                    sum += w;
                    for (int c = 0; c < 3; c++)
                    {
                        acc[c] += w * v[(h * 53 * 3) + (j * 3) + c];
                    }
                }

                for (int c = 0; c < 3; c++)
                {
                    Assert.Equal(acc[c] / sum, output[(h * 37 * 3) + (i * 3) + c], 1e-5);
                }
            }
        }
    }

    [Theory]
    [InlineData(4, 0.5f, 1e-3, 11)]
    [InlineData(8, 1.0f, 1e-3, 12)]
    [InlineData(8, 1.0f, 1e-6, 13)]
    [InlineData(2, 2.0f, 1e-4, 14)]
    public void Measured_error_never_exceeds_the_certificate(int d, float bound, double eps, int seed)
    {
        // Entries uniform in [-B, B], the papers' scale 1/d.
        var shape = new AttentionShape(1, 2, 150, 170, d, 5);
        float[] q = Uniform(shape.QueryLength, seed, bound), k = Uniform(shape.KeyLength, seed + 1, bound), v = Uniform(shape.ValueLength, seed + 2, 3);
        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { Scale = 1f / d, RelativeError = eps });
        Assert.True(certificate.PolynomialRelativeError <= eps);
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 1.0 / d));
        double worst = Tolerance.MaxAbsError(output, exact);

        // float32 output rounding (half an ulp of |out| <= 3) is outside the exact-arithmetic bound.
        Assert.True(worst <= certificate.OutputBound + 3e-7, $"error {worst:E3} > certificate {certificate.OutputBound:E3}");
    }

    [Fact]
    public void Error_does_not_grow_with_degree()
    {
        var shape = new AttentionShape(1, 1, 80, 90, 3, 2);
        float[] q = Uniform(shape.QueryLength, 5, 1.5f), k = Uniform(shape.KeyLength, 6, 1.5f), v = Uniform(shape.ValueLength, 7, 1);
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 1.0));
        double previous = double.PositiveInfinity;
        for (int g = 10; g <= 22; g += 2)
        {
            var output = new float[shape.OutputLength];
            PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { Scale = 1f, Degree = g });
            double error = Tolerance.MaxAbsError(output, exact);
            Assert.True(error <= (previous * 1.01) + 1e-7, $"g={g}: {error:E3} > {previous:E3}");
            previous = error;
        }
    }

    [Fact]
    public void Feature_budget_and_unreachable_ranges_are_clear_errors()
    {
        var shape = AttentionShape.SingleHead(10, 64);
        float[] x = Uniform(shape.QueryLength, 1, 1);
        var output = new float[shape.OutputLength];
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => PolynomialAttention.Compute(x, x, x, shape, output, new PolynomialAttentionOptions { RelativeError = 1e-6 }));
        Assert.Contains("C(d + g, g)", ex.Message);

        float[] big = Uniform(shape.QueryLength, 2, 100);
        Assert.Throws<ArgumentOutOfRangeException>(() => PolynomialAttention.Compute(big, big, big, shape, output));
    }

    [Theory]
    [InlineData(40, 40)]
    [InlineData(30, 70)]
    [InlineData(70, 30)]
    [InlineData(300, 300)] // several 128-key blocks: prefix states plus the diagonal block
    [InlineData(200, 457)]
    [InlineData(457, 200)]
    public void Causal_matches_the_masked_brute_force_polynomial_attention(int nq, int nk)
    {
        var shape = new AttentionShape(1, 4, nq, nk, 3, 2, KeyValueHeadCount: 2);
        float[] q = Uniform(shape.QueryLength, 21, 1), k = Uniform(shape.KeyLength, 22, 1), v = Uniform(shape.ValueLength, 23, 1);
        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { Scale = 0.5f, Degree = 6, Causal = true });
        ExpPolynomial p = ExpPolynomial.OfDegree(certificate.Range, 6);
        for (int h = 0; h < 4; h++)
        {
            int hk = h / 2;
            for (int i = 0; i < nq; i++)
            {
                int visible = Math.Clamp(i + 1 + nk - nq, 0, nk);
                double[] acc = new double[2];
                double sum = 0;
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    for (int t = 0; t < 3; t++)
                    {
                        dot += (double)q[(((h * nq) + i) * 3) + t] * k[(((hk * nk) + j) * 3) + t];
                    }

                    double w = p.Evaluate(0.5 * dot);
                    sum += w;
                    acc[0] += w * v[(((hk * nk) + j) * 2) + 0];
                    acc[1] += w * v[(((hk * nk) + j) * 2) + 1];
                }

                for (int c = 0; c < 2; c++)
                {
                    double expected = visible == 0 ? 0 : acc[c] / sum;
                    Assert.Equal(expected, output[(((h * nq) + i) * 2) + c], 1e-5);
                }
            }
        }

        // And within the certificate of exact causal attention.
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.5, Causal: true));
        Assert.True(Tolerance.MaxAbsError(output, exact) <= certificate.OutputBound + 3e-7);
    }

    [Theory]
    [InlineData(2, false)]
    [InlineData(2, true)]
    [InlineData(4, false)]
    [InlineData(4, true)]
    public void Even_power_in_linear_time_equals_the_power_attention_kernel(int power, bool causal)
    {
        var shape = new AttentionShape(2, 4, 45, 60, 5, 3, KeyValueHeadCount: 2);
        float[] q = Uniform(shape.QueryLength, 31, 1), k = Uniform(shape.KeyLength, 32, 1), v = Uniform(shape.ValueLength, 33, 1);
        var linear = new float[shape.OutputLength];
        var quadratic = new float[shape.OutputLength];
        long rank = PolynomialAttention.ComputeEvenPower(q, k, v, shape, linear, power, scale: 0.7f, causal: causal);
        Assert.Equal(MonomialFeatures.Rank(5, power), rank);
        PowerAttention.Compute(q, k, v, shape, quadratic, new PowerAttentionOptions { Power = power, Scale = 0.7f, Causal = causal });
        double[] reference = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.7, Causal: causal, Power: power));
        Tolerance.AssertExact(linear, reference, $"even power {power}");
        for (int i = 0; i < linear.Length; i++)
        {
            Assert.Equal(quadratic[i], linear[i], 5e-5);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    public void Odd_or_small_powers_are_refused(int power)
    {
        var shape = AttentionShape.SingleHead(4, 2);
        float[] x = Uniform(8, 1, 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => PolynomialAttention.ComputeEvenPower(x, x, x, shape, new float[8], power));
    }

    [Fact]
    public void Causal_output_bits_do_not_depend_on_thread_count()
    {
        var shape = new AttentionShape(1, 2, 1000, 1300, 4, 3, KeyValueHeadCount: 1);
        float[] q = Uniform(shape.QueryLength, 51, 1), k = Uniform(shape.KeyLength, 52, 1), v = Uniform(shape.ValueLength, 53, 1);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        PolynomialAttention.Compute(q, k, v, shape, one, new PolynomialAttentionOptions { Scale = 0.3f, Causal = true, MaxDegreeOfParallelism = 1 });
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, two, new PolynomialAttentionOptions { Scale = 0.3f, Causal = true, MaxDegreeOfParallelism = 2 });
        Assert.Equal(one, two);
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.3, Causal: true));
        Assert.True(Tolerance.MaxAbsError(one, exact) <= certificate.OutputBound);
    }

    [Fact]
    public void Certificate_rounding_term_is_the_float32_output_rounding_plus_a_small_double_term()
    {
        var shape = AttentionShape.SingleHead(64, 2);
        float[] x = Uniform(shape.QueryLength, 61, 1);
        var output = new float[shape.OutputLength];
        PolynomialCertificate small = PolynomialAttention.Compute(x, x, x, shape, output, new PolynomialAttentionOptions { Scale = 0.5f, RelativeError = 1e-6 });
        double maxV = x.Max(Math.Abs);
        Assert.InRange(small.RoundingBound, 5.96e-8 * maxV, 1e-6 * maxV); // float32 output rounding dominates
        Assert.Equal((2 * small.PolynomialRelativeError / (1 - small.PolynomialRelativeError) * maxV) + small.RoundingBound, small.OutputBound, 1e-12);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Batched_grouped_query_heads_match_the_oracle_within_the_certificate(bool causal)
    {
        var shape = new AttentionShape(2, 6, 150, 210, 3, 4, KeyValueHeadCount: 2);
        float[] q = Uniform(shape.QueryLength, 71, 1), k = Uniform(shape.KeyLength, 72, 1), v = Uniform(shape.ValueLength, 73, 2);
        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { Scale = 0.5f, RelativeError = 1e-5, Causal = causal });
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.5, Causal: causal));
        double worst = Tolerance.MaxAbsError(output, exact);
        Assert.True(worst <= certificate.OutputBound, $"error {worst:E3} > certificate {certificate.OutputBound:E3}");
        Assert.True(worst < 1e-4);
    }

    [Fact]
    public void Output_bits_do_not_depend_on_thread_count()
    {
        var shape = new AttentionShape(1, 2, 1100, 9000, 3, 2);
        float[] q = Uniform(shape.QueryLength, 41, 1), k = Uniform(shape.KeyLength, 42, 1), v = Uniform(shape.ValueLength, 43, 1);
        var one = new float[shape.OutputLength];
        var two = new float[shape.OutputLength];
        PolynomialAttention.Compute(q, k, v, shape, one, new PolynomialAttentionOptions { Scale = 0.3f, MaxDegreeOfParallelism = 1 });
        PolynomialAttention.Compute(q, k, v, shape, two, new PolynomialAttentionOptions { Scale = 0.3f, MaxDegreeOfParallelism = 2 });
        Assert.Equal(one, two);
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: 0.3));
        Assert.True(Tolerance.MaxAbsError(one, exact) <= PolynomialAttention.Compute(q, k, v, shape, two, new PolynomialAttentionOptions { Scale = 0.3f }).OutputBound + 3e-7);
    }
}
