using System.Text.Json;
using FastAttention.IO;
using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class CliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    private static string Ocr(string file) => Data.Fixture("ocr", "line40", "block2", file);

    [Theory]
    [InlineData("exact", "--top", "5", "--top applies to --method lev, not exact")]
    [InlineData("exact", "--eps", "0.01", "--eps applies to --method poly or auto or lev, not exact")]
    [InlineData("poly", "--seed", "3", "--seed applies to --method sketch, not poly")]
    [InlineData("lev", "--degree", "3", "--degree applies to --method poly, not lev")]
    [InlineData("sketch", "--kernel", "tiled-v256", "--kernel applies to --method exact or auto, not sketch")]
    public void Attend_rejects_an_option_of_another_method_instead_of_ignoring_it(string method, string option, string value, string message)
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "o.npy");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--method", method, option, value);
        Assert.Equal(2, code);
        Assert.Contains(message, err);
        Assert.False(File.Exists(outPath));
    }


    [Theory]
    [InlineData("poly", "--kernel", "tiled-v256", "--kernel applies to --method exact, not poly")]
    [InlineData("exact", "--eps", "0.01", "--eps applies to --method poly or tensor-poly, not exact")]
    [InlineData("gemm", "--causal", null, "--causal applies to --method exact or poly or sketch or tensor or tensor-poly, not gemm")]
    [InlineData("leverage", "--heads", "4", "--heads applies to --method exact or poly or sketch or tensor or tensor-poly, not leverage")]
    [InlineData("gemm", "--d", "8", "--d applies to --method exact or poly or sketch or tensor or tensor-poly or leverage, not gemm")]
    public void Bench_rejects_an_option_of_another_method_instead_of_ignoring_it(string method, string option, string? value, string message)
    {
        string[] args = ["bench", "--method", method, "--n", "64", "--repeat", "1", option, .. value is null ? Array.Empty<string>() : [value]];
        (int code, _, string err) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains(message, err);
    }

    [Fact]
    public void Tensor_rejects_polynomial_options_with_the_exact_method()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "t.npy");
        (int code, _, string err) = Run("tensor", "--q", Ocr("q.npy"), "--k1", Ocr("k.npy"), "--k2", Ocr("k.npy"), "--v1", Ocr("v.npy"), "--v2", Ocr("v.npy"), "--out", outPath, "--degree", "3");
        Assert.Equal(2, code);
        Assert.Contains("--degree applies to --method poly, not exact", err);
        Assert.False(File.Exists(outPath));
    }

    [Fact]
    public void Attend_writes_the_same_output_as_the_library_and_prints_json()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "o.npy");
        (int code, string stdout, string stderr) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--json", "--threads", "1");
        Assert.True(code == 0, stderr);

        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        Assert.Equal("exact", root.GetProperty("method").GetString());
        Assert.Equal([8, 42, 15], root.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()));
        Assert.True(root.GetProperty("seconds").GetDouble() > 0);
        Assert.True(root.GetProperty("gflops").GetDouble() > 0);

        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        var expected = new float[8 * 42 * 15];
        ExactAttention.Compute(q.Data, k.Data, v.Data, new AttentionShape(1, 8, 42, 42, 15, 15), expected);
        TensorData<float> written = NumpyFile.ReadFloat32(outPath);
        Assert.Equal([8, 42, 15], written.Shape);
        Assert.Equal(expected, written.Data);
        Assert.Single(Directory.GetFiles(dir)); // no temp file left behind
    }

    [Fact]
    public void Attend_reads_named_tensors_from_npz_and_safetensors_and_writes_by_extension()
    {
        string dir = Data.TempDir();
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        string npz = Path.Combine(dir, "qkv.npz"), st = Path.Combine(dir, "qkv.safetensors");
        NpzFile.Write(npz, [new("q", q), new("k", k), new("v", v)], compress: true);
        SafeTensorsFile.Write(st, [new("q", q), new("k", k), new("v", v)]);

        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "a.npy")).Code);
        Assert.Equal(0, Run("attend", "--q", npz + ":q", "--k", npz + ":k", "--v", npz + ":v", "--out", Path.Combine(dir, "b.safetensors")).Code);
        Assert.Equal(0, Run("attend", "--q", st + ":q", "--k", st + ":k", "--v", st + ":v", "--out", Path.Combine(dir, "c.npz")).Code);
        float[] a = NumpyFile.ReadFloat32(Path.Combine(dir, "a.npy")).Data;
        Assert.Equal(a, SafeTensorsFile.ReadFloat32(Path.Combine(dir, "b.safetensors"), "out").Data);
        Assert.Equal(a, NpzFile.ReadFloat32(Path.Combine(dir, "c.npz"), "out").Data);

        (int code, _, string err) = Run("attend", "--q", npz, "--k", npz + ":k", "--v", npz + ":v", "--out", Path.Combine(dir, "d.npy"));
        Assert.Equal(2, code);
        Assert.Contains("holds 3 tensors", err);
    }

    [Fact]
    public void Existing_output_is_never_clobbered_without_force()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "precious.npy");
        File.WriteAllText(outPath, "keep me");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath);
        Assert.Equal(2, code);
        Assert.Contains("--force", err);
        Assert.Equal("keep me", File.ReadAllText(outPath));

        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--force").Code);
        Assert.Equal([8, 42, 15], NumpyFile.ReadFloat32(outPath).Shape);
    }

    [Fact]
    public void Failed_runs_leave_no_output_and_no_temp_files()
    {
        string dir = Data.TempDir();
        string nanQ = Path.Combine(dir, "nan.npy");
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy"));
        q.Data[100] = float.NaN;
        NumpyFile.Write(nanQ, q);
        string outPath = Path.Combine(dir, "o.npy");

        (int code, _, string err) = Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath);
        Assert.Equal(3, code);
        Assert.Contains($"--q ({nanQ}) contains NaN at [0, 6, 10] (flat index 100)", err); // shape [8, 42, 15]
        Assert.Contains("--allow-nonfinite", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Equal([nanQ], Directory.GetFiles(dir));

        // The approximate methods and inspect need finite inputs whatever the flags say.
        (code, _, err) = Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--method", "poly", "--allow-nonfinite");
        Assert.Equal(2, code);
        Assert.Contains("--allow-nonfinite applies to --method exact, not poly", err);
        (code, _, err) = Run("inspect", "--q", nanQ, "--k", Ocr("k.npy"));
        Assert.Equal(3, code);
        Assert.Contains("contains NaN at [0, 6, 10]", err);
        Assert.Equal([nanQ], Directory.GetFiles(dir));

        Assert.Equal(0, Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--allow-nonfinite").Code);
        Assert.Contains(NumpyFile.ReadFloat32(outPath).Data, float.IsNaN);
    }

    [Fact]
    public void Shape_mismatch_names_both_shapes()
    {
        string other = Data.Fixture("ocr", "line260", "block1", "k.npy");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", other, "--v", Ocr("v.npy"), "--out", Path.Combine(Data.TempDir(), "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("[8, 260, 15]", err);
        Assert.Contains("[8, 42, 15]", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void Bad_files_exit_3_naming_the_file()
    {
        string dir = Data.TempDir();
        string garbage = Path.Combine(dir, "garbage.npy");
        File.WriteAllText(garbage, "this is not numpy");
        (int code, _, string err) = Run("attend", "--q", garbage, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("garbage.npy", err);

        (code, _, err) = Run("attend", "--q", Path.Combine(dir, "missing.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("missing.npy", err);

        string empty = Path.Combine(dir, "empty.npy");
        NumpyFile.Write(empty, new TensorData<float>([], 0, 15));
        (code, _, err) = Run("attend", "--q", empty, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("empty", err);
    }

    [Fact]
    public void Outputs_whose_extension_names_no_format_they_can_hold_are_refused_before_any_work()
    {
        string dir = Data.TempDir();
        string[] qkv = ["--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy")];
        (int code, _, string err) = Run(["attend", .. qkv, "--out", Path.Combine(dir, "o.txt")]);
        Assert.Equal(2, code);
        Assert.Contains("o.txt: the extension must be one of .npy, .npz, .safetensors", err);

        // The OCR keys have 8 heads: eight index sets of different lengths fit an .npz, not an .npy or a safetensors file.
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.npy"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("8 heads", err);
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.safetensors"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("must be one of .npy, .npz", err);
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.npz"), "--scores", Path.Combine(dir, "s.npz"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("--scores", err);
        Assert.Empty(Directory.GetFiles(dir));
    }

    [Theory]
    [InlineData("attend", "--q")]
    [InlineData("attend", "--bogus", "1")]
    [InlineData("attend", "--q", "a.npy", "--k", "b.npy", "--v", "c.npy")]
    [InlineData("attend", "--q", "a", "--k", "b", "--v", "c", "--out", "o.npy", "--scale", "abc")]
    [InlineData("attend", "--q", "a", "--k", "b", "--v", "c", "--out", "o.npy", "--threads", "0")]
    [InlineData("attend", "--q", "a", "--k", "b", "--v", "c", "--out", "o.npy", "--method", "magic")]
    [InlineData("frobnicate")]
    [InlineData("inspect", "stray")]
    public void Usage_errors_exit_2_with_one_line(params string[] args)
    {
        (int code, _, string err) = Run(args);
        Assert.Equal(2, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith("fastattn: ", err);
    }

    [Fact]
    public void A_forced_kernel_that_cannot_take_the_input_is_a_usage_error()
    {
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(Data.TempDir(), "o.npy"), "--kernel", "splitkey-v256");
        Assert.Equal(2, code);
        Assert.Contains("splitkey-v256", err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void Help_lists_commands_and_options()
    {
        (int code, string stdout, _) = Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("attend", stdout);
        Assert.Contains("inspect", stdout);
        Assert.Contains("demo", stdout);
        (code, stdout, _) = Run("attend", "--help");
        Assert.Equal(0, code);
        Assert.Contains("--causal", stdout);
    }

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
        Assert.True(json.RootElement.GetProperty("gflopsAreEffective").GetBoolean());
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

    [Fact]
    public void Attend_poly_writes_an_output_within_its_certificate()
    {
        string dir = Data.TempDir();
        var random = new Random(9);
        float[] Small(int count) => [.. Enumerable.Range(0, count).Select(_ => ((random.NextSingle() * 2) - 1) * 0.8f)];
        foreach (string name in new[] { "q", "k", "v" })
        {
            NumpyFile.Write(Path.Combine(dir, name + ".npy"), new TensorData<float>(Small(2 * 300 * 4), 2, 300, 4));
        }

        string[] inputs = ["--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "k.npy"), "--v", Path.Combine(dir, "v.npy"), "--scale", "0.25"];
        Assert.Equal(0, Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "exact.npy")]).Code);
        (int code, string stdout, string stderr) = Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "poly.npy"), "--method", "poly", "--eps", "1e-4", "--json"]);
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement certificate = json.RootElement.GetProperty("certificate");
        Assert.True(certificate.GetProperty("polynomialRelativeError").GetDouble() <= 1e-4);
        Assert.True(certificate.GetProperty("rank").GetInt64() > 1);
        double bound = certificate.GetProperty("outputBound").GetDouble();
        float[] exact = NumpyFile.ReadFloat32(Path.Combine(dir, "exact.npy")).Data, poly = NumpyFile.ReadFloat32(Path.Combine(dir, "poly.npy")).Data;
        double worst = exact.Zip(poly, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(worst <= bound + 1e-6, $"{worst:E3} > {bound:E3}");

        Assert.Equal(0, Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "c.npy"), "--method", "poly", "--causal"]).Code);
        Assert.Equal(2, Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "d.npy"), "--method", "poly", "--eps", "-1"]).Code);
    }

    [Fact]
    public void Attend_auto_plans_and_sketch_runs_with_its_report()
    {
        string dir = Data.TempDir();
        var random = new Random(19);
        float[] Small(int count) => [.. Enumerable.Range(0, count).Select(_ => ((random.NextSingle() * 2) - 1) * 0.5f)];
        foreach (string name in new[] { "q", "k", "v" })
        {
            NumpyFile.Write(Path.Combine(dir, name + ".npy"), new TensorData<float>(Small(2000 * 4), 2000, 4));
        }

        string[] inputs = ["attend", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "k.npy"), "--v", Path.Combine(dir, "v.npy"), "--scale", "0.25"];
        (int code, string stdout, string stderr) = Run([.. inputs, "--out", Path.Combine(dir, "auto.npy"), "--method", "auto", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement plan = json.RootElement.GetProperty("plan");
            string chosen = plan.GetProperty("method").GetString()!;
            Assert.Equal(chosen, json.RootElement.GetProperty("method").GetString());
            Assert.Equal(3, plan.GetProperty("candidates").GetArrayLength());
            Assert.Equal(chosen == "poly", json.RootElement.TryGetProperty("certificate", out _));
        }

        (code, stdout, stderr) = Run([.. inputs, "--out", Path.Combine(dir, "sketch.npy"), "--method", "sketch", "--sketch", "16", "--seed", "3", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement sketch = json.RootElement.GetProperty("sketch");
            Assert.Equal(16, sketch.GetProperty("sketchSize").GetInt32());
            Assert.Equal(136, sketch.GetProperty("rank").GetInt64());
        }

        Assert.Equal(2, Run([.. inputs, "--out", Path.Combine(dir, "bad.npy"), "--method", "sketch", "--sketch", "0"]).Code);
        Assert.Equal(2, Run([.. inputs, "--out", Path.Combine(dir, "bad.npy"), "--method", "fast"]).Code);
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

    [Fact]
    public void Experiments_write_markdown_and_svg_and_never_overwrite_without_force()
    {
        string dir = Data.TempDir();
        (int code, string stdout, string stderr) = Run("experiment", "sketch", "--out", dir, "--threads", "2");
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "sketch.md"));
        Assert.Contains("![error vs sketch size](sketch-error.svg)", markdown);
        Assert.Contains("| 64 | 128 |", markdown);
        System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, "sketch-error.svg")));
        Assert.Contains("d=64 m=128", stdout);

        // A second run refuses to overwrite, leaving the files as they were.
        (code, _, stderr) = Run("experiment", "sketch", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--force", stderr);
        Assert.Equal(markdown, File.ReadAllText(Path.Combine(dir, "sketch.md")));

        Assert.Equal(2, Run("experiment", "nonsense").Code);
        Assert.Equal(2, Run("experiment").Code);

        // An --out that cannot be a folder fails at once, before any computing.
        string file = Path.Combine(dir, "a-file");
        File.WriteAllText(file, "x");
        (code, _, stderr) = Run("experiment", "bounded-entries", "--out", Path.Combine(file, "sub"));
        Assert.Equal(2, code);
        Assert.Contains("cannot create the folder", stderr);
        Assert.False(Directory.Exists(Path.Combine(file, "sub")));
    }

    [Fact]
    public void Bounded_entries_experiment_reports_errors_inside_their_certificates()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "bounded-entries", "--out", dir);
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "bounded-entries.md"));
        foreach (string svg in new[] { "bounded-entries-time.svg", "bounded-entries-error.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }

        // Every measured (a) row: error <= certificate <= 1/n.
        int checkedRows = 0;
        foreach (string line in markdown.Split('\n').Where(l => l.StartsWith("| 2^", StringComparison.Ordinal) && l.Count(c => c == '|') == 14))
        {
            string[] cells = [.. line.Split('|').Select(c => c.Trim())];
            if (double.TryParse(cells[9], System.Globalization.CultureInfo.InvariantCulture, out double error))
            {
                double bound = double.Parse(cells[10], System.Globalization.CultureInfo.InvariantCulture);
                double n = Math.Pow(2, int.Parse(cells[1][2..], System.Globalization.CultureInfo.InvariantCulture));
                Assert.True(error <= bound && bound <= 1 / n, line);
                checkedRows++;
            }
        }

        Assert.True(checkedRows >= 6, $"only {checkedRows} measured rows");
    }

    [Fact]
    public void Tensor_command_matches_the_library_and_checks_its_inputs()
    {
        string dir = Data.TempDir();
        var random = new Random(31);
        float[] Small(int count) => [.. Enumerable.Range(0, count).Select(_ => ((random.NextSingle() * 2) - 1) * 0.9f)];
        foreach (string name in new[] { "q", "k1", "k2", "v1", "v2" })
        {
            NumpyFile.Write(Path.Combine(dir, name + ".npy"), new TensorData<float>(Small(2 * 40 * 4), 2, 40, 4));
        }

        NumpyFile.Write(Path.Combine(dir, "bad.npy"), new TensorData<float>(Small(2 * 41 * 4), 2, 41, 4));
        string[] inputs = ["tensor", .. new[] { "q", "k1", "k2", "v1", "v2" }.SelectMany(n => new[] { "--" + n, Path.Combine(dir, n + ".npy") })];
        (int code, string stdout, string stderr) = Run([.. inputs, "--out", Path.Combine(dir, "exact.npy"), "--json"]);
        Assert.True(code == 0, stderr);
        float[] written = NumpyFile.ReadFloat32(Path.Combine(dir, "exact.npy")).Data;
        var shape = new TensorAttentionShape(2, 40, 40, 4, 4);
        ReadOnlyMemory<float>[] keys = [NumpyFile.ReadFloat32(Path.Combine(dir, "k1.npy")).Data, NumpyFile.ReadFloat32(Path.Combine(dir, "k2.npy")).Data];
        ReadOnlyMemory<float>[] values = [NumpyFile.ReadFloat32(Path.Combine(dir, "v1.npy")).Data, NumpyFile.ReadFloat32(Path.Combine(dir, "v2.npy")).Data];
        var expected = new float[shape.OutputLength];
        TensorAttention.Compute(NumpyFile.ReadFloat32(Path.Combine(dir, "q.npy")).Data, keys, values, shape, expected);
        Assert.Equal(expected, written);

        (code, stdout, stderr) = Run([.. inputs, "--out", Path.Combine(dir, "poly.npy"), "--method", "poly", "--eps", "1e-4", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            double bound = json.RootElement.GetProperty("certificate").GetProperty("outputBound").GetDouble();
            float[] poly = NumpyFile.ReadFloat32(Path.Combine(dir, "poly.npy")).Data;
            Assert.True(poly.Zip(written, (a, b) => Math.Abs(a - b)).Max() <= bound + 1e-6);
        }

        Assert.Equal(0, Run([.. inputs, "--out", Path.Combine(dir, "w.npy"), "--window", "5,7"]).Code);
        Assert.Equal(0, Run([.. inputs, "--out", Path.Combine(dir, "a.npy"), "--method", "auto", "--causal"]).Code);
        Assert.Equal(2, Run([.. inputs, "--out", Path.Combine(dir, "x.npy"), "--window", "5"]).Code);
        Assert.Equal(2, Run([.. inputs, "--out", Path.Combine(dir, "x.npy"), "--window", "5,5", "--method", "poly"]).Code);
        string[] mismatched = [.. inputs];
        mismatched[Array.IndexOf(mismatched, "--k2") + 1] = Path.Combine(dir, "bad.npy");
        (code, _, stderr) = Run([.. mismatched, "--out", Path.Combine(dir, "x.npy")]);
        Assert.Equal(3, code);
        Assert.Contains("--k2", stderr);
    }

    [Fact]
    public void Tensor_experiment_writes_its_three_parts()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "tensor", "--out", dir);
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "tensor.md"));
        foreach (string svg in new[] { "tensor-time.svg", "tensor-budget.svg", "tensor-match3.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }

        Assert.Contains("**Crossover**", markdown);
        Assert.Contains("| 128 | 10000 | 100.0 % |", markdown); // Match3 solved at large lambda
    }

    [Fact]
    public void Leverage_writes_sorted_int64_indices_with_a_certificate_and_checks_its_options()
    {
        string dir = Data.TempDir();
        string keys = Path.Combine(dir, "k.npy");
        float[] k = Data.Normal(3000 * 6, 5);
        for (int j = 0; j < 3000; j += 101)
        {
            k[j * 6] *= 15;
        }

        NumpyFile.Write(keys, new TensorData<float>(k, 3000, 6));
        (int code, string stdout, string stderr) = Run("leverage", "--k", keys, "--out", Path.Combine(dir, "u.npy"), "--eps", "0.02", "--scores", Path.Combine(dir, "s.npy"), "--json");
        Assert.True(code == 0, stderr);
        long[] u = NumpyFile.ReadInt64(Path.Combine(dir, "u.npy")).Data;
        (int[] expected, UniversalSetCertificate certificate) = UniversalSet.Compute(k, 6, 0.02);
        Assert.Equal(expected.Select(x => (long)x), u);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement c = json.RootElement.GetProperty("certificate");
            Assert.Equal(0.02, c.GetProperty("eps").GetDouble());
            Assert.Equal(2, c.GetProperty("p").GetDouble());
            Assert.Equal(u.Length, c.GetProperty("size").GetInt32());
            Assert.Equal(6 / 0.02, c.GetProperty("sizeBound").GetDouble(), 9);
            Assert.Equal(6, c.GetProperty("scoreSum").GetDouble(), 6);
        }

        Assert.Equal(3000, NumpyFile.ReadFloat64(Path.Combine(dir, "s.npy")).Data.Length);

        // Streaming gives the same set; per-head sets go to an .npz.
        Assert.Equal(0, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "stream.npy"), "--eps", "0.02", "--stream").Code);
        Assert.Equal(u, NumpyFile.ReadInt64(Path.Combine(dir, "stream.npy")).Data);
        Assert.Equal(0, Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "heads.npz"), "--top", "5").Code);
        Assert.Equal(8, NpzFile.Names(Path.Combine(dir, "heads.npz")).Count);
        Assert.Equal(5, NpzFile.ReadInt64(Path.Combine(dir, "heads.npz"), "head3").Data.Length);

        Assert.Equal(2, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "x.npy"), "--eps", "0").Code);
        Assert.Equal(2, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "x.npy"), "--eps", "1.5").Code);
        Assert.Equal(2, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "x.npy"), "--eps", "0.1", "--p", "0").Code);
        Assert.Equal(2, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "x.npy"), "--eps", "0.1", "--top", "3").Code);
        Assert.Equal(2, Run("leverage", "--k", keys, "--out", Path.Combine(dir, "u.npy"), "--eps", "0.1").Code); // exists, no --force
    }

    [Fact]
    public void Attend_lev_keeps_the_top_keys_per_head()
    {
        string dir = Data.TempDir();
        (int code, string stdout, string stderr) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "lev.npy"), "--method", "lev", "--top", "42", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        Assert.All(json.RootElement.GetProperty("keptKeys").EnumerateArray(), e => Assert.Equal(42, e.GetInt32()));

        // All 42 keys kept: exactly the exact kernel's output.
        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "exact.npy")).Code);
        Assert.Equal(NumpyFile.ReadFloat32(Path.Combine(dir, "exact.npy")).Data, NumpyFile.ReadFloat32(Path.Combine(dir, "lev.npy")).Data);
        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "u.npy"), "--method", "lev", "--eps", "0.05").Code);
        Assert.Equal(2, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "x.npy"), "--method", "lev").Code);
        Assert.Equal(2, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "x.npy"), "--method", "lev", "--eps", "0.1", "--top", "4").Code);
        Assert.Equal(2, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "x.npy"), "--method", "lev", "--top", "3", "--causal").Code);
    }

    [Fact]
    public void Levattention_experiment_reports_the_guarantee_holding_on_the_ocr_tensors()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "levattention", "--out", dir, "--data", Path.Combine(Data.RepoRoot, "data"), "--shared", Path.Combine(dir, "none"));
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "levattention.md"));
        Assert.Contains("Every one is in U, as the theorem says.", markdown);
        Assert.Contains("| line260/block2 |", markdown);
        foreach (string svg in new[] { "levattention-size.svg", "levattention-stream.svg", "levattention-recall.svg", "levattention-error.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }
    }
}
