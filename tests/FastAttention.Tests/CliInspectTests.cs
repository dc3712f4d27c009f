using System.Text.Json;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn inspect`: bounds, regime and plan.</summary>
[Trait("Category", "Slow")]
public class CliInspectTests : CliTest
{
    [Fact]
    public void Inspect_reports_bounds_and_regime()
    {
        (int code, string stdout, string stderr) = Run("inspect", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy"));
        double b = Math.Max(q.Data.Max(Math.Abs), k.Data.Max(Math.Abs));
        Assert.Equal(b, root.GetProperty("B").GetDouble(), 1e-6);
        Assert.Equal(Math.Sqrt(Math.Log(42)), root.GetProperty("sqrtLogN").GetDouble(), 1e-9);
        Assert.Equal(b <= Math.Sqrt(Math.Log(42)) ? "bounded" : "large", root.GetProperty("regime").GetString());

        // The exact max |s q.k| over each head: brute force here.
        double max = 0;
        for (int h = 0; h < 8; h++)
        {
            for (int i = 0; i < 42; i++)
            {
                for (int j = 0; j < 42; j++)
                {
                    double dot = 0;
                    for (int t = 0; t < 15; t++)
                    {
                        dot += q.Data[(h * 630) + (i * 15) + t] * (double)k.Data[(h * 630) + (j * 15) + t];
                    }

                    max = Math.Max(max, Math.Abs(dot / Math.Sqrt(15)));
                }
            }
        }

        Assert.Equal(max, root.GetProperty("maxAbsScaledScore").GetDouble(), 1e-3);

        Assert.False(root.GetProperty("polynomial").GetProperty("feasible").GetBoolean());

        (code, stdout, _) = Run("inspect", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"));
        Assert.Equal(0, code);
        Assert.Contains("regime:", stdout);
        Assert.Contains("polynomial method", stdout);
    }

    [Fact]
    public void Inspect_classifies_small_entries_as_bounded()
    {
        string dir = Data.TempDir();
        var random = new Random(3);
        float[] Small() => [.. Enumerable.Range(0, 4096 * 8).Select(_ => (float)((random.NextDouble() * 2) - 1) * 0.5f)];
        NumpyFile.Write(Path.Combine(dir, "q.npy"), new TensorData<float>(Small(), 4096, 8));
        NumpyFile.Write(Path.Combine(dir, "k.npy"), new TensorData<float>(Small(), 4096, 8));
        (int code, string stdout, _) = Run("inspect", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "k.npy"), "--json", "--scale", "0.125");
        Assert.Equal(0, code);
        Assert.Contains("\"regime\": \"bounded\"", stdout);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement poly = json.RootElement.GetProperty("polynomial");
        Assert.True(poly.GetProperty("feasible").GetBoolean());
        int degree = poly.GetProperty("degree").GetInt32();
        Assert.Equal(FastAttention.Polynomial.ExpPolynomial.Fit(poly.GetProperty("range").GetDouble(), 1e-3).Degree, degree);
        Assert.Equal(FastAttention.Polynomial.MonomialFeatures.Rank(8, degree), poly.GetProperty("rank").GetInt64());
    }

    [Fact]
    public void Inspect_prints_the_plan_unless_told_not_to()
    {
        (int code, string stdout, string stderr) = Run("inspect", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--json", "--threads", "1");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        Assert.Equal("exact", json.RootElement.GetProperty("plan").GetProperty("method").GetString()); // 42 tokens: exact wins

        (code, stdout, _) = Run("inspect", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--no-plan");
        Assert.Equal(0, code);
        Assert.DoesNotContain("plan:", stdout);
    }
}
