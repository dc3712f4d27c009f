using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The certificate holds on real keys. Queries, keys and values are GloVe word vectors (data/glove: the
/// 2,000 most frequent words of GloVe 6B 100-d, see its README), their coordinates taken as they are, and the
/// scale chosen to put R = s max||q|| max||k|| into the regime under test.
/// </summary>
public class GloveCertificateTests
{
    private static readonly Lazy<float[]> Vectors = new(() => NumpyFile.ReadFloat32(Data.Fixture("glove", "glove100_top2k.npy")).Data);

    /// <summary>Rows first .. first+count of the GloVe matrix, coordinates offset .. offset+d.</summary>
    private static float[] Rows(int first, int count, int offset, int d)
    {
        float[] all = Vectors.Value;
        var rows = new float[count * d];
        for (int i = 0; i < count; i++)
        {
            Array.Copy(all, ((first + i) * 100) + offset, rows, i * d, d);
        }

        return rows;
    }

    private static double MaxNorm(float[] rows, int d) =>
        Enumerable.Range(0, rows.Length / d).Max(i => Math.Sqrt(Enumerable.Range(0, d).Sum(t => (double)rows[(i * d) + t] * rows[(i * d) + t])));

    [Theory]
    [InlineData(6, 0.5, 1e-2, false)]
    [InlineData(6, 1.0, 1e-3, false)]
    [InlineData(6, 2.0, 1e-6, false)]
    [InlineData(4, 3.0, 1e-4, true)]
    [InlineData(6, 1.0, 1e-3, true)]
    [InlineData(100, 0.1, 1e-2, false)] // every coordinate: degree 2, r = C(102, 2) = 5151
    public void Measured_error_is_inside_the_certificate_on_glove_vectors(int d, double range, double eps, bool causal)
    {
        const int Queries = 400, Keys = 1200;
        float[] q = Rows(0, Queries, 0, d), k = Rows(Queries, Keys, 0, d);
        float[] v = Rows(Queries, Keys, 100 - 8, 8); // the last 8 coordinates as values
        var shape = new AttentionShape(1, 1, Queries, Keys, d, 8);
        float scale = (float)(range / (MaxNorm(q, d) * MaxNorm(k, d)));

        var output = new float[shape.OutputLength];
        PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output,
            new PolynomialAttentionOptions { Scale = scale, RelativeError = eps, Causal = causal });
        Assert.True(certificate.PolynomialRelativeError <= eps);
        Assert.InRange(certificate.Range, range * 0.999, range * 1.001);

        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: scale, Causal: causal));
        double worst = Tolerance.MaxAbsError(output, exact);
        Assert.True(worst <= certificate.OutputBound, $"error {worst:E3} > certificate {certificate.OutputBound:E3}");
    }

    [Fact]
    public void Error_shrinks_with_degree_on_glove_vectors()
    {
        const int d = 5;
        float[] q = Rows(0, 300, 20, d), k = Rows(300, 900, 20, d), v = Rows(300, 900, 60, 4);
        var shape = new AttentionShape(1, 1, 300, 900, d, 4);
        float scale = (float)(2.5 / (MaxNorm(q, d) * MaxNorm(k, d)));
        double[] exact = Reference.Attention(q, k, v, shape, new Reference.Options(Scale: scale));
        double previous = double.PositiveInfinity;
        for (int g = 6; g <= 16; g += 2)
        {
            var output = new float[shape.OutputLength];
            PolynomialCertificate certificate = PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { Scale = scale, Degree = g });
            double error = Tolerance.MaxAbsError(output, exact);
            Assert.True(error <= certificate.OutputBound, $"g={g}: {error:E3} > {certificate.OutputBound:E3}");
            Assert.True(error <= (previous * 1.01) + 1e-7, $"g={g}: {error:E3} > {previous:E3}");
            previous = error;
        }
    }
}
