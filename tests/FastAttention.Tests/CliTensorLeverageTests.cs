using System.Text.Json;
using FastAttention.IO;
using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn tensor` and `fastattn leverage`.</summary>
[Trait("Category", "Slow")]
public class CliTensorLeverageTests : CliTest
{
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

        // Windows: 2 (d + dv) flops per (query, key1, key2) triple inside the windows, as the method table counts them.
        (code, stdout, stderr) = Run([.. inputs, "--out", Path.Combine(dir, "w.npy"), "--window", "5,7", "--json"]);
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            double triples = Enumerable.Range(0, 40).Sum(i => Math.Min(5.0, i + 1) * Math.Min(7.0, i + 1));
            Assert.Equal(2.0 * (4 + 4) * 2 * triples, json.RootElement.GetProperty("flops").GetDouble());
            Assert.Equal(json.RootElement.GetProperty("flops").GetDouble() / json.RootElement.GetProperty("seconds").GetDouble() / 1e9, json.RootElement.GetProperty("gflops").GetDouble(), 6);
        }

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
}
