using System.Text.Json;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn demo` and `fastattn bench`.</summary>
[Trait("Category", "Slow")]
public class CliBenchDemoTests : CliTest
{
    [Fact]
    public void Demo_prints_a_table_with_every_dataset_and_small_errors()
    {
        (int code, string stdout, string stderr) = Run("demo", "--repeat", "1", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement[] rows = [.. json.RootElement.GetProperty("rows").EnumerateArray()];
        Assert.Contains(rows, r => r.GetProperty("data").GetString() == "line260/block2");
        Assert.Contains(rows, r => r.GetProperty("kernel").GetString()!.StartsWith("splitkey", StringComparison.Ordinal));
        Assert.Contains(rows, r => r.GetProperty("method").GetString() == "poly");
        Assert.Contains(rows, r => r.GetProperty("method").GetString() == "tensor");
        Assert.Contains(rows, r => r.GetProperty("method").GetString() == "lev");
        foreach (JsonElement row in rows)
        {
            // lev drops keys (its error against full softmax is the heuristic's cost): only finite is required.
            double limit = row.GetProperty("method").GetString() switch
            {
                "poly" => row.GetProperty("certificateOutputBound").GetDouble(),
                "lev" => double.MaxValue,
                _ => 1e-5,
            };
            Assert.True(row.GetProperty("maxErrorVsFloat64").GetDouble() <= limit);
            if (row.TryGetProperty("maxRelativeErrorVsOnnxRuntime", out JsonElement ort))
            {
                Assert.True(ort.GetDouble() <= Tolerance.OnnxRuntimeRelative);
            }
        }

        (code, stdout, _) = Run("demo", "--repeat", "1");
        Assert.Equal(0, code);
        Assert.Contains("GFLOP/s", stdout);
        Assert.Contains("line40/block1", stdout);
    }

    [Fact]
    public void Bench_reports_median_gflops_and_percent_of_peak()
    {
        (int code, string stdout, string stderr) = Run("bench", "--n", "300", "--d", "32", "--heads", "2", "--causal", "--repeat", "3", "--threads", "1", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        double median = root.GetProperty("medianSeconds").GetDouble();
        Assert.True(median > 0);
        Assert.Equal(3, root.GetProperty("repeats").GetInt32());
        double flops = 2.0 * 2 * (300 * 301 / 2) * (32 + 32); // visible causal pairs, both heads
        Assert.Equal(flops, root.GetProperty("flops").GetDouble());
        Assert.Equal(flops / median / 1e9, root.GetProperty("gflops").GetDouble(), 6);
        double percent = root.GetProperty("percentOfPeak").GetDouble();
        Assert.Equal(100 * root.GetProperty("gflops").GetDouble() / root.GetProperty("peakGflops").GetDouble(), percent, 6);
    }

    [Fact]
    public void Bench_poly_reports_effective_gflops_and_the_certificate()
    {
        (int code, string stdout, string stderr) = Run("bench", "--method", "poly", "--n", "500", "--d", "4", "--scale", "0.25", "--repeat", "2", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        Assert.True(json.RootElement.GetProperty("effectiveGflops").GetDouble() > 0);
        Assert.False(json.RootElement.TryGetProperty("gflopsAreEffective", out _)); // gflops are its own flops, never effective
        Assert.True(json.RootElement.GetProperty("certificate").GetProperty("rank").GetInt64() > 1);
        Assert.Equal(2, Run("bench", "--method", "lev", "--n", "10").Code);

        (code, stdout, stderr) = Run("bench", "--method", "sketch", "--n", "300", "--d", "16", "--sketch", "8", "--repeat", "2", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument sketch = JsonDocument.Parse(stdout);
        Assert.Equal("sketch-double", sketch.RootElement.GetProperty("kernel").GetString());
    }

    [Fact]
    public void Bench_on_files_writes_the_same_output_as_attend()
    {
        string dir = Data.TempDir();
        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "a.npy")).Code);
        (int code, _, string stderr) = Run("bench", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--repeat", "2", "--out", Path.Combine(dir, "b.npy"));
        Assert.True(code == 0, stderr);
        Assert.Equal(NumpyFile.ReadFloat32(Path.Combine(dir, "a.npy")).Data, NumpyFile.ReadFloat32(Path.Combine(dir, "b.npy")).Data);
        Assert.Equal(2, Run("bench", "--d", "8").Code);
    }
}
