using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The backward of polynomial (factorised) and sketched attention: the fast path against the float64 reference
/// (<see cref="ReferenceFactorisedBackward"/>, every pair weight direct), the reference against central finite
/// differences, and the properties (causal, grouped-query heads, threads, NaN policy, float32 error).
/// </summary>
public class PolynomialBackwardTests
{
    private sealed record Gradients(float[] Query, float[] Key, float[] Value);

    private static double[] Wide(float[] x) => [.. x.Select(v => (double)v)];

    private static (float[] Q, float[] K, float[] V, float[] DO) Inputs(AttentionShape shape, int seed, float bound) =>
        (Data.Uniform(shape.QueryLength, seed, bound), Data.Uniform(shape.KeyLength, seed + 1, bound),
         Data.Uniform(shape.ValueLength, seed + 2, 1), Data.Uniform(shape.OutputLength, seed + 3, 1));

    private static (Gradients Gradients, float[] Output, PolynomialCertificate Certificate) Polynomial(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, PolynomialAttentionOptions options)
    {
        var output = new float[shape.OutputLength];
        PolynomialAttention.Compute(q, k, v, shape, output, options);
        var g = new Gradients(new float[q.Length], new float[k.Length], new float[v.Length]);
        PolynomialCertificate certificate = PolynomialAttention.Backward(q, k, v, output, dO, shape, g.Query, g.Key, g.Value, options);
        return (g, output, certificate);
    }

    private static Gradients Sketched(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, SketchedAttentionOptions options)
    {
        var output = new float[shape.OutputLength];
        SketchedAttention.Compute(q, k, v, shape, output, options);
        var g = new Gradients(new float[q.Length], new float[k.Length], new float[v.Length]);
        SketchedAttention.Backward(q, k, v, output, dO, shape, g.Query, g.Key, g.Value, options);
        return g;
    }

    /// <summary>The pair weight of the polynomial the forward chooses for these inputs and options.</summary>
    private static PolynomialPairWeight PolynomialWeight(float[] q, float[] k, AttentionShape shape, PolynomialAttentionOptions options)
    {
        double s = options.Scale ?? (1.0 / Math.Sqrt(shape.HeadDim));
        double range = PolynomialAttention.RangeBound(q, k, shape.HeadDim, s);
        return new PolynomialPairWeight(PolynomialAttention.Prepare(range, s, shape.HeadDim, options).Polynomial.Coefficients, s);
    }

    private static SketchPairWeight SketchWeight(AttentionShape shape, SketchedAttentionOptions options)
    {
        SketchFeatureMap map = SketchedAttention.Map(shape, options);
        return new SketchPairWeight(map.Sketch1.ToArray(), map.Sketch2.ToArray(), map.SketchSize, options.Scale ?? (1.0 / Math.Sqrt(shape.HeadDim)));
    }

    private static (double[] Query, double[] Key, double[] Value) Reference(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, bool causal, PairWeight w) =>
        ReferenceFactorisedBackward.Backward(Wide(q), Wide(k), Wide(v), Wide(dO), shape, causal, w);

    /// <summary>max |actual - expected| / max(max |expected|, 1e-3): relative to the largest entry, absolute for a gradient that is (nearly) zero, as dQ with one key.</summary>
    private static double RelativeError(float[] actual, double[] expected) =>
        Tolerance.MaxAbsError(actual, expected) / Math.Max(expected.Max(Math.Abs), 1e-3);

    private static void AssertClose(Gradients actual, (double[] Query, double[] Key, double[] Value) expected, double tolerance, string what)
    {
        Assert.True(RelativeError(actual.Query, expected.Query) <= tolerance, $"{what}: dQ relative error {RelativeError(actual.Query, expected.Query):E3}");
        Assert.True(RelativeError(actual.Key, expected.Key) <= tolerance, $"{what}: dK relative error {RelativeError(actual.Key, expected.Key):E3}");
        Assert.True(RelativeError(actual.Value, expected.Value) <= tolerance, $"{what}: dV relative error {RelativeError(actual.Value, expected.Value):E3}");
    }

    [Theory]
    [InlineData(1, 1, 1, 1, 2, false)]
    [InlineData(1, 1, 1, 1, 4, true)]
    [InlineData(2, 7, 8, 3, 3, false)]
    [InlineData(7, 2, 8, 3, 3, true)]
    [InlineData(31, 33, 15, 5, 2, true)]
    [InlineData(33, 31, 15, 5, 2, false)]
    [InlineData(113, 113, 8, 16, 3, true)]
    [InlineData(113, 257, 8, 1, 2, true)]
    [InlineData(257, 113, 1, 4, 4, true)]
    [InlineData(33, 113, 64, 8, 2, false)]
    [InlineData(300, 300, 4, 3, 3, true)]
    [InlineData(150, 410, 6, 3, 2, true)]
    [InlineData(410, 150, 6, 3, 2, true)]
    [InlineData(70, 50, 3, 2, 0, true)]
    [InlineData(50, 130, 2, 3, 0, false)]
    public void Polynomial_backward_matches_the_float64_reference(int nq, int nk, int d, int dv, int degree, bool causal)
    {
        // degree 0: the degree the forward fits to eps = 1e-6 on wider inputs.
        var shape = new AttentionShape(2, 2, nq, nk, d, dv, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, nq + nk + d, degree > 0 ? 0.3f : 1.5f);
        var options = degree > 0 ? new PolynomialAttentionOptions { Degree = degree, Causal = causal } : new PolynomialAttentionOptions { RelativeError = 1e-6, Causal = causal };
        (Gradients fast, _, PolynomialCertificate certificate) = Polynomial(q, k, v, dO, shape, options);
        Assert.True(degree > 0 ? certificate.Degree == degree : certificate.Degree >= 5, $"degree {certificate.Degree}");
        AssertClose(fast, Reference(q, k, v, dO, shape, causal, PolynomialWeight(q, k, shape, options)), 2e-5, $"nq {nq} nk {nk} d {d} g {certificate.Degree}");
    }

    [Theory]
    [InlineData(1, 1, 1, 1, false)]
    [InlineData(7, 31, 8, 3, true)]
    [InlineData(33, 31, 15, 5, false)]
    [InlineData(300, 300, 4, 3, true)]
    [InlineData(150, 410, 6, 2, true)]
    [InlineData(410, 150, 6, 2, false)]
    public void Sketched_backward_matches_the_float64_reference(int nq, int nk, int d, int dv, bool causal)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, dv, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 7 + nq, 1f);
        var options = new SketchedAttentionOptions { SketchSize = 7, Seed = 11, Causal = causal };
        Gradients fast = Sketched(q, k, v, dO, shape, options);
        AssertClose(fast, Reference(q, k, v, dO, shape, causal, SketchWeight(shape, options)), 2e-5, $"sketch nq {nq} nk {nk} d {d}");
    }

    /// <summary>The reference backward against central differences of the reference forward, L = sum dO o O, h = 1e-6.</summary>
    [Theory]
    [InlineData(1, 1, 1, 2, false)]
    [InlineData(3, 5, 2, 2, true)]
    [InlineData(5, 4, 3, 3, false)]
    [InlineData(4, 5, 3, 4, true)]
    [InlineData(5, 5, 2, 4, false)]
    public void Reference_backward_matches_central_finite_differences(int nq, int nk, int d, int degree, bool causal)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, 2, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 100 + degree, 0.8f);
        var options = new PolynomialAttentionOptions { Degree = degree, Causal = causal };
        PairWeight polynomial = PolynomialWeight(q, k, shape, options);
        PairWeight sketch = SketchWeight(shape, new SketchedAttentionOptions { SketchSize = 3, Seed = 5 });
        foreach (PairWeight w in new[] { polynomial, sketch })
        {
            (double[] dq, double[] dk, double[] dv) = Reference(q, k, v, dO, shape, causal, w);
            double[] qd = Wide(q), kd = Wide(k), vd = Wide(v), g = Wide(dO);
            double Loss() => ReferenceFactorisedBackward.Forward(qd, kd, vd, shape, causal, w).Zip(g, (o, x) => o * x).Sum();
            foreach ((double[] x, double[] analytic) in new[] { (qd, dq), (kd, dk), (vd, dv) })
            {
                for (int i = 0; i < x.Length; i++)
                {
                    const double H = 1e-6;
                    double saved = x[i];
                    x[i] = saved + H;
                    double plus = Loss();
                    x[i] = saved - H;
                    double minus = Loss();
                    x[i] = saved;
                    double numeric = (plus - minus) / (2 * H);
                    Assert.True(Math.Abs(numeric - analytic[i]) <= 1e-7 * (1 + Math.Abs(analytic[i])), $"{w.GetType().Name} element {i}: finite difference {numeric}, analytic {analytic[i]}");
                }
            }
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Gradient_bits_do_not_depend_on_the_thread_count(bool causal)
    {
        var shape = new AttentionShape(1, 2, 1100, 1300, 4, 3, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 3, 0.5f);
        Gradients one = Polynomial(q, k, v, dO, shape, new PolynomialAttentionOptions { Degree = 3, Causal = causal, MaxDegreeOfParallelism = 1 }).Gradients;
        Gradients two = Polynomial(q, k, v, dO, shape, new PolynomialAttentionOptions { Degree = 3, Causal = causal, MaxDegreeOfParallelism = 2 }).Gradients;
        Assert.Equal(one.Query, two.Query);
        Assert.Equal(one.Key, two.Key);
        Assert.Equal(one.Value, two.Value);

        Gradients s1 = Sketched(q, k, v, dO, shape, new SketchedAttentionOptions { SketchSize = 6, Seed = 3, Causal = causal, MaxDegreeOfParallelism = 1 });
        Gradients s2 = Sketched(q, k, v, dO, shape, new SketchedAttentionOptions { SketchSize = 6, Seed = 3, Causal = causal, MaxDegreeOfParallelism = 2 });
        Assert.Equal(s1.Query, s2.Query);
        Assert.Equal(s1.Key, s2.Key);
        Assert.Equal(s1.Value, s2.Value);
        Assert.Contains(s1.Key, x => x != 0);
    }

    [Fact]
    public void Causal_past_queries_see_no_future_keys_and_send_them_no_gradient()
    {
        var shape = new AttentionShape(1, 1, 300, 300, 4, 3);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 21, 0.5f);
        const int Cut = 170; // keys and queries from here on are "the future"
        Array.Fill(k, 0.6f, 0, 4); // key 0 holds the largest entry and norm, so R and the scaling stay put
        float[] k2 = [.. k], v2 = [.. v];
        for (int i = Cut * 4; i < k2.Length; i++)
        {
            k2[i] *= 0.5f;
        }

        for (int i = Cut * 3; i < v2.Length; i++)
        {
            v2[i] = -v2[i];
        }

        var options = new PolynomialAttentionOptions { Degree = 3, Causal = true };
        Gradients a = Polynomial(q, k, v, dO, shape, options).Gradients, b = Polynomial(q, k2, v2, dO, shape, options).Gradients;
        for (int i = 0; i < Cut * 4; i++)
        {
            Assert.Equal(a.Query[i], b.Query[i], 1e-6);
        }

        float[] pastOnly = [.. dO];
        Array.Clear(pastOnly, Cut * 3, pastOnly.Length - (Cut * 3));
        Gradients c = Polynomial(q, k, v, pastOnly, shape, options).Gradients;
        Assert.All(c.Key[(Cut * 4)..], x => Assert.Equal(0f, x));
        Assert.All(c.Value[(Cut * 3)..], x => Assert.Equal(0f, x));
        Assert.Contains(c.Key[..(Cut * 4)], x => x != 0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Grouped_query_heads_equal_repeated_kv_heads_summed_over_the_group(bool causal)
    {
        var grouped = new AttentionShape(1, 4, 150, 140, 5, 3, KeyValueHeadCount: 2);
        var repeated = grouped with { KeyValueHeadCount = 4 };
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(grouped, 9, 0.5f);
        float[] Repeat(float[] x)
        {
            int half = x.Length / 2;
            return [.. x[..half], .. x[..half], .. x[half..], .. x[half..]];
        }

        var options = new PolynomialAttentionOptions { Degree = 3, Causal = causal };
        Gradients g = Polynomial(q, k, v, dO, grouped, options).Gradients;
        Gradients r = Polynomial(q, Repeat(k), Repeat(v), dO, repeated, options).Gradients;
        Assert.True(RelativeError(g.Query, Wide(r.Query)) <= 1e-6);
        foreach ((float[] a, float[] b) in new[] { (g.Key, r.Key), (g.Value, r.Value) })
        {
            int part = a.Length / 2;
            double[] summed = [.. Enumerable.Range(0, a.Length).Select(i => (double)b[(i / part * 2 * part) + (i % part)] + b[(i / part * 2 * part) + part + (i % part)])];
            Assert.True(RelativeError(a, summed) <= 1e-6);
        }
    }

    [Fact]
    public void Backward_uses_the_forward_certificate_and_the_same_seed_gives_the_same_sketch()
    {
        var shape = new AttentionShape(1, 1, 40, 50, 3, 2);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 5, 0.7f);
        var options = new PolynomialAttentionOptions { RelativeError = 1e-4 };
        var output = new float[shape.OutputLength];
        PolynomialCertificate forward = PolynomialAttention.Compute(q, k, v, shape, output, options);
        (_, _, PolynomialCertificate backward) = Polynomial(q, k, v, dO, shape, options);
        Assert.Equal(forward, backward);

        var sketch = new SketchedAttentionOptions { SketchSize = 5, Seed = 8 };
        Gradients a = Sketched(q, k, v, dO, shape, sketch), b = Sketched(q, k, v, dO, shape, sketch), c = Sketched(q, k, v, dO, shape, sketch with { Seed = 9 });
        Assert.Equal(a.Query, b.Query);
        Assert.NotEqual(a.Query, c.Query);
    }

    [Fact]
    public void Non_finite_output_gradient_and_bad_buffers_are_rejected_naming_the_parameter()
    {
        var shape = new AttentionShape(1, 1, 6, 5, 3, 2);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 2, 0.5f);
        float[] o = new float[shape.OutputLength], dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        PolynomialAttention.Compute(q, k, v, shape, o);
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
        {
            float[] nonFinite = [.. dO];
            nonFinite[3] = bad;
            Assert.Equal("outputGradient", Assert.Throws<ArgumentException>(() => PolynomialAttention.Backward(q, k, v, o, nonFinite, shape, dq, dk, dv)).ParamName);
            Assert.Equal("outputGradient", Assert.Throws<ArgumentException>(() => SketchedAttention.Backward(q, k, v, o, nonFinite, shape, dq, dk, dv)).ParamName);
        }

        Assert.All(dq, x => Assert.Equal(0f, x)); // rejected before any work
        Assert.Equal("keyGradient", Assert.Throws<ArgumentException>(() => PolynomialAttention.Backward(q, k, v, o, dO, shape, dq, dk[1..], dv)).ParamName);
        Assert.Equal("valueGradient", Assert.Throws<ArgumentException>(() => PolynomialAttention.Backward(q, k, v, o, dO, shape, dq, dk, o)).ParamName);
        Assert.Equal("queryGradient", Assert.Throws<ArgumentException>(() => SketchedAttention.Backward(q, k, v, o, dO, shape, q, dk, dv)).ParamName);
        Assert.Equal("output", Assert.Throws<ArgumentException>(() => PolynomialAttention.Backward(q, k, v, o[1..], dO, shape, dq, dk, dv)).ParamName);
        Assert.Equal("shape", Assert.Throws<ArgumentException>(() => PolynomialAttention.Backward(q, k, v, o, dO, shape with { QueryCount = 0 }, dq, dk, dv)).ParamName);
    }

    /// <summary>A naive float32 backward: the reference's formulas in float loops, pair weights by Horner in float.</summary>
    private static Gradients NaiveFloat(float[] q, float[] k, float[] v, float[] dO, AttentionShape s, IReadOnlyList<double> coefficients, float scale)
    {
        int d = s.HeadDim, dv = s.ValueDim, nq = s.QueryCount, nk = s.KeyCount;
        var g = new Gradients(new float[q.Length], new float[k.Length], new float[v.Length]);
        float[] w = new float[nk], wd = new float[nk], o = new float[dv];
        for (int i = 0; i < nq; i++)
        {
            float z = 0;
            for (int j = 0; j < nk; j++)
            {
                float x = 0;
                for (int l = 0; l < d; l++)
                {
                    x += q[(i * d) + l] * k[(j * d) + l];
                }

                x *= scale;
                float p = 0, dp = 0;
                for (int t = coefficients.Count - 1; t >= 0; t--)
                {
                    p = (p * x) + (float)coefficients[t];
                    dp = t >= 1 ? (dp * x) + (t * (float)coefficients[t]) : dp;
                }

                w[j] = p;
                wd[j] = dp * scale;
                z += p;
            }

            Array.Clear(o);
            for (int j = 0; j < nk; j++)
            {
                for (int c = 0; c < dv; c++)
                {
                    o[c] += w[j] * v[(j * dv) + c] / z;
                }
            }

            float dOdotO = 0;
            for (int c = 0; c < dv; c++)
            {
                dOdotO += dO[(i * dv) + c] * o[c];
            }

            for (int j = 0; j < nk; j++)
            {
                float dOdotV = 0;
                for (int c = 0; c < dv; c++)
                {
                    dOdotV += dO[(i * dv) + c] * v[(j * dv) + c];
                    g.Value[(j * dv) + c] += w[j] * dO[(i * dv) + c] / z;
                }

                float f = (dOdotV - dOdotO) / z * wd[j];
                for (int l = 0; l < d; l++)
                {
                    g.Query[(i * d) + l] += f * k[(j * d) + l];
                    g.Key[(j * d) + l] += f * q[(i * d) + l];
                }
            }
        }

        return g;
    }

    [Theory]
    [InlineData(64, 64, 8, 2)]
    [InlineData(200, 150, 4, 3)]
    [InlineData(33, 300, 15, 2)]
    public void Float32_error_is_no_worse_than_twice_a_naive_float32_backward(int nq, int nk, int d, int degree)
    {
        var shape = new AttentionShape(1, 1, nq, nk, d, 4);
        (float[] q, float[] k, float[] v, float[] dO) = Inputs(shape, 31, 0.5f);
        var options = new PolynomialAttentionOptions { Degree = degree };
        PolynomialPairWeight w = PolynomialWeight(q, k, shape, options);
        double s = 1.0 / Math.Sqrt(d);
        var coefficients = PolynomialAttention.Prepare(PolynomialAttention.RangeBound(q, k, d, s), s, d, options).Polynomial.Coefficients;
        (double[] Query, double[] Key, double[] Value) reference = Reference(q, k, v, dO, shape, false, w);
        Gradients fast = Polynomial(q, k, v, dO, shape, options).Gradients;
        Gradients naive = NaiveFloat(q, k, v, dO, shape, coefficients, (float)s);
        foreach ((float[] f, float[] n, double[] r) in new[] { (fast.Query, naive.Query, reference.Query), (fast.Key, naive.Key, reference.Key), (fast.Value, naive.Value, reference.Value) })
        {
            double fastError = Tolerance.MaxAbsError(f, r), naiveError = Tolerance.MaxAbsError(n, r);
            Assert.True(fastError <= (Tolerance.NaiveFactor * naiveError) + Tolerance.NaiveFloor, $"fast {fastError:E3}, naive {naiveError:E3}");
        }
    }
}
