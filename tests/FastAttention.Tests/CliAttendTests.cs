using System.Text.Json;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn attend`: outputs equal to the library's, every tensor format, and each method's report.</summary>
public class CliAttendTests : CliTest
{
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
    public void Attend_power_matches_the_library_and_approximate_methods_report_own_and_effective_gflops()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "p.npy");
        (int code, string stdout, string stderr) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--method", "power", "--power", "3", "--json");
        Assert.True(code == 0, stderr);
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        var expected = new float[8 * 42 * 15];
        PowerAttention.Compute(q.Data, k.Data, v.Data, new AttentionShape(1, 8, 42, 42, 15, 15), expected, new PowerAttentionOptions { Power = 3 });
        Assert.Equal(expected, NumpyFile.ReadFloat32(outPath).Data);
        using (JsonDocument power = JsonDocument.Parse(stdout))
        {
            Assert.Equal(1.0, power.RootElement.GetProperty("scale").GetDouble());
            Assert.False(power.RootElement.TryGetProperty("effectiveGflops", out _));
        }

        // lev: GFLOP/s counts its own work (selection + attention over the kept keys); effectiveGflops, exact attention's flops.
        (code, stdout, stderr) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "l.npy"), "--method", "lev", "--top", "4", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument lev = JsonDocument.Parse(stdout);
        double seconds = lev.RootElement.GetProperty("seconds").GetDouble(), flops = lev.RootElement.GetProperty("flops").GetDouble();
        Assert.Equal(flops / seconds / 1e9, lev.RootElement.GetProperty("gflops").GetDouble(), 6);
        double exact = FlopCount.ExactAttention(1, 8, 42, 42, 15, 15, false);
        Assert.Equal(exact / seconds / 1e9, lev.RootElement.GetProperty("effectiveGflops").GetDouble(), 6);
        Assert.True(flops < exact);
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("f16")]
    [InlineData("bf16")]
    [InlineData("q8")]
    public void Attend_kv_dtype_reports_the_storage_bound_and_the_output_keeps_within_it(string dtype)
    {
        string dir = Data.TempDir();
        string[] inputs = ["--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--threads", "1"];
        Assert.Equal(0, Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "f32.npy")]).Code);
        (int code, string stdout, string stderr) = Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "typed.npy"), "--kv-dtype", dtype, "--json"]);
        Assert.True(code == 0, stderr);

        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement root = json.RootElement;
        Assert.True(KvElementTypes.TryParse(dtype, out KvElementType type));
        Assert.Equal(dtype, root.GetProperty("kvDtype").GetString());
        Assert.Equal(8.0 * KvElementTypes.RowBytes(type, 15) / 15, root.GetProperty("kvBitsPerValue").GetDouble(), 9);
        Assert.Equal(2 * 8 * 42 * KvElementTypes.RowBytes(type, 15), root.GetProperty("kvBytes").GetInt64());
        Assert.Equal(type != KvElementType.Float32, root.GetProperty("kvConverted").GetBoolean()); // float32 files
        if (type != KvElementType.Float32)
        {
            Assert.EndsWith("-" + dtype, root.GetProperty("kernel").GetString()); // the registry's names carry the storage type
        }

        JsonElement bound = root.GetProperty("kvBound");
        double absolute = bound.GetProperty("absolute").GetDouble();
        if (type == KvElementType.Float32)
        {
            Assert.Equal(0, absolute);
            Assert.Equal(0, bound.GetProperty("scoreError").GetDouble());
        }
        else
        {
            Assert.True(absolute > 0, $"bound {absolute}");
            Assert.True(bound.GetProperty("scoreError").GetDouble() > 0);
            Assert.True(bound.GetProperty("valueError").GetDouble() > 0);
            Assert.Equal(absolute, bound.GetProperty("relativeToMaxValue").GetDouble() * bound.GetProperty("maxAbsValue").GetDouble(), 12);
        }

        // The storage bound plus the float32 kernels' own rounding (once for each run) of the float32 run's output.
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        var reference = new double[8 * 42 * 15];
        ReferenceAttention.Compute(q.Data, k.Data, v.Data, new AttentionShape(1, 8, 42, 42, 15, 15), reference);
        float[] plain = NumpyFile.ReadFloat32(Path.Combine(dir, "f32.npy")).Data, typed = NumpyFile.ReadFloat32(Path.Combine(dir, "typed.npy")).Data;
        for (int i = 0; i < plain.Length; i++)
        {
            double limit = absolute + (2 * (Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(reference[i]))));
            Assert.True(Math.Abs(typed[i] - plain[i]) <= limit, $"[{i}] {typed[i]} vs {plain[i]}: {Math.Abs(typed[i] - plain[i]):E3} > {limit:E3}");
        }

        if (type == KvElementType.Float32)
        {
            Assert.Equal(plain, typed); // f32 storage is the float32 path: the same bits
        }

        (code, stdout, _) = Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "text.npy"), "--kv-dtype", dtype]);
        Assert.Equal(0, code);
        Assert.Contains($"keys and values stored as {dtype}", stdout);
        Assert.Contains("every output within", stdout);
    }

    [Fact]
    public void Attend_kv_dtype_f16_takes_float16_files_as_stored()
    {
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy")), k = NumpyFile.ReadFloat32(Ocr("k.npy")), v = NumpyFile.ReadFloat32(Ocr("v.npy"));
        Half[] k16 = [.. k.Data.Select(x => (Half)x)], v16 = [.. v.Data.Select(x => (Half)x)];
        string kPath = KvFilesTests.WriteNpy("<f2", "(8, 42, 15)", KvFilesTests.Bytes(k16, bigEndian: false));
        string vPath = KvFilesTests.WriteNpy(">f2", "(8, 42, 15)", KvFilesTests.Bytes(v16, bigEndian: true));
        string dir = Data.TempDir();
        string[] inputs = ["--q", Ocr("q.npy"), "--k", kPath, "--v", vPath];

        (int code, string stdout, string stderr) = Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "f16.npy"), "--kv-dtype", "f16", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            Assert.False(json.RootElement.GetProperty("kvConverted").GetBoolean());
            Assert.Equal("float16", json.RootElement.GetProperty("keyFileType").GetString());
            Assert.Equal("float16", json.RootElement.GetProperty("valueFileType").GetString());
            Assert.True(json.RootElement.GetProperty("kvBound").GetProperty("absolute").GetDouble() > 0);
        }

        // Taken as stored, the values are the file's: the output is exact attention on them to float32 tolerance.
        var reference = new double[8 * 42 * 15];
        ReferenceAttention.Compute(q.Data, [.. k16.Select(h => (float)h)], [.. v16.Select(h => (float)h)], new AttentionShape(1, 8, 42, 42, 15, 15), reference);
        Tolerance.AssertExact(NumpyFile.ReadFloat32(Path.Combine(dir, "f16.npy")).Data, reference, "attend --kv-dtype f16 on float16 files");

        // The same files as f32 are widened (exactly), the f32 path with no storage bound.
        (code, stdout, stderr) = Run([.. new[] { "attend" }, .. inputs, "--out", Path.Combine(dir, "f32.npy"), "--kv-dtype", "f32", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            Assert.True(json.RootElement.GetProperty("kvConverted").GetBoolean());
            Assert.Equal(0, json.RootElement.GetProperty("kvBound").GetProperty("absolute").GetDouble());
        }

        Tolerance.AssertExact(NumpyFile.ReadFloat32(Path.Combine(dir, "f32.npy")).Data, reference, "attend --kv-dtype f32 on float16 files");
    }

    [Fact]
    public void Attend_kv_dtype_rejects_bad_values_and_other_methods_in_one_line()
    {
        string dir = Data.TempDir();
        string[] inputs = ["attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy")];
        foreach (string[] extra in new[] { new[] { "--kv-dtype", "f64" }, ["--kv-dtype", "int8"], ["--kv-dtype", "q8", "--method", "poly"], ["--kv-dtype", "f16", "--method", "auto"], ["--kv-dtype"] })
        {
            (int code, string stdout, string stderr) = Run([.. inputs, .. extra]);
            Assert.Equal(2, code);
            Assert.Empty(stdout);
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains("--kv-dtype", stderr);
        }

        Assert.Empty(Directory.GetFiles(dir));
    }
}
