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

        Assert.DoesNotMatch(NumberTextTests.OtherExponent(), stdout);

        (code, stdout, _) = Run("demo", "--repeat", "1");
        Assert.Equal(0, code);
        Assert.Contains("GFLOP/s", stdout);
        Assert.DoesNotMatch(NumberTextTests.OtherExponent(), stdout);
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

    [Theory]
    [InlineData("f32")]
    [InlineData("f16")]
    [InlineData("bf16")]
    [InlineData("q8")]
    public void Bench_kv_dtype_times_the_typed_call_and_reports_the_stored_bytes_and_bound(string dtype)
    {
        // Decoding with grouped heads: one query per head against 700 keys of d = 40 (q8: one whole block and a part one a row).
        (int code, string stdout, string stderr) = Run("bench", "--n", "1", "--nk", "700", "--d", "40", "--heads", "4", "--kv-heads", "2", "--repeat", "3", "--kv-dtype", dtype, "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        Assert.True(KvElementTypes.TryParse(dtype, out KvElementType type));
        long kvBytes = 2 * 2 * 700 * KvElementTypes.RowBytes(type, 40);
        Assert.Equal(dtype, root.GetProperty("kvDtype").GetString());
        Assert.Equal(kvBytes, root.GetProperty("kvBytes").GetDouble());
        Assert.Equal((4.0 * 4 * 40) + kvBytes, root.GetProperty("inputBytes").GetDouble());
        double median = root.GetProperty("medianSeconds").GetDouble();
        Assert.Equal(kvBytes / median / 1e9, root.GetProperty("kvGBps").GetDouble(), 6);
        Assert.Equal(8.0 * KvElementTypes.RowBytes(type, 40) / 40, root.GetProperty("kvBitsPerValue").GetDouble(), 9);
        double bound = root.GetProperty("kvBound").GetProperty("absolute").GetDouble();
        Assert.True(type == KvElementType.Float32 ? bound == 0 : bound > 0, $"bound {bound}");
        Assert.False(root.TryGetProperty("readBandwidthMachineGBps", out _)); // only with --bandwidth
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("f16")]
    [InlineData("bf16")]
    [InlineData("q8")]
    public void Bench_kv_dtype_bandwidth_reads_the_stored_bytes_and_the_machine(string dtype)
    {
        (int code, string stdout, string stderr) = Run("bench", "--n", "1", "--nk", "4096", "--d", "64", "--heads", "2", "--repeat", "3", "--kv-dtype", dtype, "--bandwidth", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        Assert.True(root.GetProperty("plainReadGBps").GetDouble() > 0);
        double machine = root.GetProperty("readBandwidthMachineGBps").GetDouble();
        Assert.True(machine > 0);
        Assert.Equal(100 * root.GetProperty("inputGBps").GetDouble() / machine, root.GetProperty("percentOfMachineBandwidth").GetDouble(), 6);
        Assert.Equal(100 * root.GetProperty("kvGBps").GetDouble() / machine, root.GetProperty("kvPercentOfMachineBandwidth").GetDouble(), 6);

        // The float32 path reports the machine's figure too, with no storage fields.
        (code, stdout, stderr) = Run("bench", "--n", "1", "--nk", "4096", "--d", "64", "--repeat", "3", "--bandwidth", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument plain = JsonDocument.Parse(stdout);
        Assert.True(plain.RootElement.GetProperty("readBandwidthMachineGBps").GetDouble() > 0);
        Assert.False(plain.RootElement.TryGetProperty("kvDtype", out _));
    }

    [Fact]
    public void Bench_kv_dtype_reads_float16_files_as_stored_and_rejects_what_it_does_not_time()
    {
        string dir = Data.TempDir();
        TensorData<float> k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        string kPath = KvFilesTests.WriteNpy("<f2", "(8, 42, 15)", KvFilesTests.Bytes([.. k.Data.Select(x => (Half)x)], bigEndian: false));
        string vPath = KvFilesTests.WriteNpy("<f2", "(8, 42, 15)", KvFilesTests.Bytes([.. v.Data.Select(x => (Half)x)], bigEndian: false));
        string outPath = Path.Combine(dir, "o.npy");
        (int code, string stdout, string stderr) = Run("bench", "--q", Ocr("q.npy"), "--k", kPath, "--v", vPath, "--kv-dtype", "f16", "--repeat", "2", "--out", outPath, "--json");
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            Assert.Equal(2 * 8 * 42 * 15 * 2, json.RootElement.GetProperty("kvBytes").GetDouble());
        }

        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", kPath, "--v", vPath, "--kv-dtype", "f16", "--out", Path.Combine(dir, "a.npy")).Code);
        Assert.Equal(NumpyFile.ReadFloat32(Path.Combine(dir, "a.npy")).Data, NumpyFile.ReadFloat32(outPath).Data);

        foreach (string[] args in new[]
        {
            new[] { "bench", "--n", "8", "--kv-dtype", "f16", "--backward" },
            ["bench", "--n", "8", "--kv-dtype", "f16", "--method", "poly"],
            ["bench", "--n", "8", "--kv-dtype", "f16", "--method", "gemm"],
            ["bench", "--n", "8", "--kv-dtype", "fp8"],
        })
        {
            (code, stdout, stderr) = Run(args);
            Assert.Equal(2, code);
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains("--kv-dtype", stderr);
        }
    }

    [Theory]
    [InlineData("f16")]
    [InlineData("q8")]
    public void Demo_kv_dtype_reports_the_error_against_the_float32_run_next_to_the_bound(string dtype)
    {
        (int code, string stdout, string stderr) = Run("demo", "--repeat", "1", "--kv-dtype", dtype, "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement[] stored = [.. json.RootElement.GetProperty("rows").EnumerateArray().Where(r => r.TryGetProperty("kvDtype", out _))];
        Assert.Equal(6, stored.Length); // the four OCR blocks, the random and the decoding input
        foreach (JsonElement row in stored)
        {
            Assert.Equal(dtype, row.GetProperty("kvDtype").GetString());
            Assert.EndsWith("-" + dtype, row.GetProperty("kernel").GetString());
            double bound = row.GetProperty("kvBound").GetProperty("absolute").GetDouble(), error = row.GetProperty("maxErrorVsFloat32").GetDouble();
            Assert.True(bound > 0);
            Assert.True(error <= bound + 1e-5, $"{row.GetProperty("data").GetString()}: {error:E3} > {bound:E3}");
        }

        (code, stdout, _) = Run("demo", "--repeat", "1", "--kv-dtype", dtype);
        Assert.Equal(0, code);
        Assert.Contains($"{dtype} K/V", stdout);
        Assert.Contains($"exact {dtype}", stdout);
    }
}
