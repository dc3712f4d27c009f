using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public partial class DistributedStateTests
{
    private static readonly AttentionShape PolyShape = new(2, 4, 19, 37, 4, 3, KeyValueHeadCount: 2);

    /// <summary>One call's inputs through the pieces: every key's state in one call per kv head, then each query head.</summary>
    private static (float[] Output, PolynomialFactors Factors) ThroughPieces(float[] q, float[] k, float[] v, AttentionShape shape, PolynomialAttentionOptions options, int[] cuts)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount, kvHeads = shape.EffectiveKeyValueHeads;
        double s = options.Scale ?? (1.0 / Math.Sqrt(d));
        var factors = PolynomialFactors.Prepare(PolynomialFactors.RangeOf(s, PolynomialFactors.MaxRowNorm(q, d), PolynomialFactors.MaxRowNorm(k, d)), d, dv, s, options);
        double qs = PolynomialFactors.InputScale(q.Max(Math.Abs)), ks = PolynomialFactors.InputScale(k.Max(Math.Abs));
        float[] output = new float[shape.OutputLength];
        for (int h = 0; h < shape.BatchSize * shape.HeadCount; h++)
        {
            int kv = (h / shape.HeadCount * kvHeads) + (h % shape.HeadCount / (shape.HeadCount / kvHeads));
            double[] state = new double[factors.StateLength];
            int[] edges = [0, .. cuts, nk];
            for (int piece = 0; piece + 1 < edges.Length; piece++)
            {
                int j0 = edges[piece], count = edges[piece + 1] - j0;
                double[] part = factors.KeyState(k.AsSpan(((kv * nk) + j0) * d, count * d), v.AsSpan(((kv * nk) + j0) * dv, count * dv), ks);
                for (int i = 0; i < state.Length; i++)
                {
                    state[i] += part[i];
                }
            }

            factors.ApplyToQueries(q.AsSpan(h * nq * d, nq * d), state, qs, ks, output.AsSpan(h * nq * dv, nq * dv));
        }

        return (output, factors);
    }

    [Fact]
    public void Polynomial_pieces_in_one_state_give_the_bits_and_certificate_of_one_call()
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(PolyShape, 11);
        var options = new PolynomialAttentionOptions { RelativeError = 1e-4 };
        float[] expected = new float[PolyShape.OutputLength];
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, PolyShape, expected, options);
        (float[] output, PolynomialFactors factors) = ThroughPieces(q, k, v, PolyShape, options, []);
        Assert.Equal(expected, output);
        Assert.Equal(certificate, factors.Certificate(PolyShape, v.Max(Math.Abs)));
        Assert.Equal((certificate.Degree, certificate.Rank), (factors.Degree, factors.FeatureCount));
    }

    [Fact]
    public void Polynomial_key_states_of_pieces_add_to_the_whole_within_the_rounding_bound()
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(PolyShape, 12);
        var options = new PolynomialAttentionOptions { RelativeError = 1e-4 };
        float[] expected = new float[PolyShape.OutputLength];
        PolynomialAttention.Compute(q, k, v, PolyShape, expected, options);
        (float[] output, PolynomialFactors factors) = ThroughPieces(q, k, v, PolyShape, options, [0, 5, 5, 30]);
        PolynomialCertificate merged = factors.Certificate(PolyShape, v.Max(Math.Abs), 5);
        for (int i = 0; i < output.Length; i++)
        {
            // Both runs lie within the rounding bound of the exact polynomial attention.
            Assert.True(Math.Abs(output[i] - expected[i]) <= 2 * merged.RoundingBound, $"output {i}: {output[i]} vs {expected[i]}, bound {merged.RoundingBound}");
        }
    }

    [Fact]
    public void Tensor_pieces_give_the_bits_and_certificate_of_one_call()
    {
        var shape = new TensorAttentionShape(2, 9, 13, 3, 2, Order: 3);
        float[] q = Data.Normal(shape.QueryLength, 21);
        float[][] k = [Data.Normal(shape.KeyLength, 22), Data.Normal(shape.KeyLength, 23)], v = [Data.Normal(shape.ValueLength, 24), Data.Normal(shape.ValueLength, 25)];
        float[] expected = new float[shape.OutputLength];
        PolynomialCertificate certificate = TensorAttention.ComputePolynomial(q, [k[0], k[1]], [v[0], v[1]], shape, expected);
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount;
        double s = 1.0 / d;
        double range = TensorAttention.RangeOf(s, PolynomialFactors.MaxRowNorm(q, d), [.. k.Select(x => PolynomialFactors.MaxRowNorm(x, d))], [.. k.Select(x => (double)x.Max(Math.Abs))]);
        Assert.Equal(certificate.Range, range);
        var factors = PolynomialFactors.Prepare(range, d, dv, s, default);
        double[] ks = [.. k.Select(x => PolynomialFactors.InputScale(x.Max(Math.Abs)))];
        float[] output = new float[shape.OutputLength];
        for (int h = 0; h < shape.HeadCount; h++)
        {
            double[] product = factors.KeyState(k[0].AsSpan(h * nk * d, nk * d), v[0].AsSpan(h * nk * dv, nk * dv), ks[0]);
            double[] second = factors.KeyState(k[1].AsSpan(h * nk * d, nk * d), v[1].AsSpan(h * nk * dv, nk * dv), ks[1]);
            System.Numerics.Tensors.TensorPrimitives.Multiply(product, second, product);
            factors.ApplyToQueries(q.AsSpan(h * nq * d, nq * d), product, PolynomialFactors.InputScale(q.Max(Math.Abs)), ks.Aggregate(1.0, (x, y) => x * y), output.AsSpan(h * nq * dv, nq * dv));
        }

        Assert.Equal(expected, output);
        Assert.Equal(certificate, factors.TensorCertificate(shape, v.Aggregate(1.0, (x, y) => x * y.Max(Math.Abs))));
    }

    [Fact]
    public void Polynomial_pieces_refuse_bad_lengths_scales_and_values()
    {
        var factors = PolynomialFactors.Prepare(2.0, 4, 3, 0.5, default);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => factors.KeyState(new float[8], new float[5], 1)).ParamName);
        Assert.Equal("keys", Assert.Throws<ArgumentException>(() => factors.KeyState(new float[7], new float[6], 1)).ParamName);
        Assert.Equal("keyScale", Assert.Throws<ArgumentOutOfRangeException>(() => factors.KeyState(new float[8], new float[6], 0)).ParamName);
        Assert.Equal("keys", Assert.Throws<ArgumentException>(() => factors.KeyState([1, 2, 3, float.NaN], new float[3], 1)).ParamName);
        Assert.Equal("state", Assert.Throws<ArgumentException>(() => factors.ApplyToQueries(new float[4], new double[factors.StateLength - 1], 1, 1, new float[3])).ParamName);
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => factors.ApplyToQueries(new float[4], new double[factors.StateLength], 1, 1, new float[4])).ParamName);
        Assert.Equal("range", Assert.Throws<ArgumentOutOfRangeException>(() => PolynomialFactors.Prepare(double.NaN, 4, 3, 0.5, default)).ParamName);
        Assert.Equal("maxKeyEntries", Assert.Throws<ArgumentException>(() => TensorAttention.RangeOf(1, 1, [1.0], [])).ParamName);
    }

    [Fact]
    public void Polynomial_key_state_of_no_keys_is_zero_and_gives_zero_output()
    {
        var factors = PolynomialFactors.Prepare(1.0, 2, 2, 1, default);
        double[] state = factors.KeyState([], [], 1);
        Assert.All(state, x => Assert.Equal(0, x));
        float[] output = [7, 7];
        factors.ApplyToQueries([0.5f, 0.25f], state, 1, 1, output);
        Assert.Equal([0f, 0f], output);
    }
}
