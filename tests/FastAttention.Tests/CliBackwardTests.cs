using System.Text.Json;
using FastAttention.IO;
using FastAttention.Lab;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn backward` and `bench --backward`: gradients equal to the library's, the flags honoured, attend's input and output rules.</summary>
public class CliBackwardTests : CliTest
{
    /// <summary>Q [shape of q], K, V and dO as .npy files in a fresh folder, seeded unit normals; returns the folder and the arrays.</summary>
    private static (string Dir, float[] Q, float[] K, float[] V, float[] DO) WriteInputs(int[] q, int[] k, int[] v, int seed)
    {
        string dir = Data.TempDir();
        int[] o = [.. q[..^1], v[^1]];
        float[] Save(string name, int[] shape, int offset)
        {
            float[] data = Data.Normal(shape.Aggregate(1L, (a, b) => a * b), seed + offset);
            NumpyFile.Write(Path.Combine(dir, name + ".npy"), new TensorData<float>(data, shape));
            return data;
        }

        return (dir, Save("q", q, 0), Save("k", k, 1), Save("v", v, 2), Save("do", o, 3));
    }

    private static string[] Inputs(string dir) =>
        ["backward", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "k.npy"), "--v", Path.Combine(dir, "v.npy"), "--dout", Path.Combine(dir, "do.npy")];

    /// <summary>The library's training forward (with log-sum-exp) and backward, 1 thread.</summary>
    private static (float[] Dq, float[] Dk, float[] Dv) Library(float[] q, float[] k, float[] v, float[] dO, AttentionShape shape, float? scale, bool causal, float? power = null)
    {
        var output = new float[shape.OutputLength];
        var lse = new float[shape.BatchSize * shape.HeadCount * shape.QueryCount];
        float[] dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        if (power is null)
        {
            var options = new ExactAttentionOptions { Scale = scale, Causal = causal, MaxDegreeOfParallelism = 1 };
            ExactAttention.Compute(q, k, v, shape, output, lse, options);
            ExactAttention.Backward(q, k, v, output, dO, lse, shape, dq, dk, dv, options);
        }
        else
        {
            var options = new PowerAttentionOptions { Power = power, Scale = scale, Causal = causal, MaxDegreeOfParallelism = 1 };
            PowerAttention.Compute(q, k, v, shape, output, lse, options);
            PowerAttention.Backward(q, k, v, output, dO, lse, shape, dq, dk, dv, options);
        }

        return (dq, dk, dv);
    }

    /// <summary>Every gradient bit for bit.</summary>
    private static void AssertSame((float[] Dq, float[] Dk, float[] Dv) expected, (float[] Dq, float[] Dk, float[] Dv) actual)
    {
        Assert.Equal(expected.Dq, actual.Dq);
        Assert.Equal(expected.Dk, actual.Dk);
        Assert.Equal(expected.Dv, actual.Dv);
    }

    private static (float[] Dq, float[] Dk, float[] Dv) Read(string path) =>
        (NpzFile.ReadFloat32(path, "dq").Data, NpzFile.ReadFloat32(path, "dk").Data, NpzFile.ReadFloat32(path, "dv").Data);

    [Fact]
    public void Backward_tensor_writes_the_five_gradients_of_the_library_with_windows()
    {
        // 2 heads, n = 9, d = 4, dv = 3; K2, V2 are second copies under other names.
        (string dir, float[] q, float[] k1, float[] v1, float[] dO) = WriteInputs([2, 9, 4], [2, 9, 4], [2, 9, 3], 31);
        float[] k2 = Data.Normal(k1.Length, 41), v2 = Data.Normal(v1.Length, 42);
        NumpyFile.Write(Path.Combine(dir, "k2.npy"), new TensorData<float>(k2, [2, 9, 4]));
        NumpyFile.Write(Path.Combine(dir, "v2.npy"), new TensorData<float>(v2, [2, 9, 3]));
        string output = Path.Combine(dir, "g.npz");
        (int code, _, string stderr) = Run("backward", "--method", "tensor", "--q", Path.Combine(dir, "q.npy"), "--k1", Path.Combine(dir, "k.npy"), "--k2", Path.Combine(dir, "k2.npy"),
            "--v1", Path.Combine(dir, "v.npy"), "--v2", Path.Combine(dir, "v2.npy"), "--dout", Path.Combine(dir, "do.npy"), "--window", "3,5", "--threads", "1", "--out", output);
        Assert.True(code == 0, stderr);

        var shape = new TensorAttentionShape(2, 9, 9, 4, 3);
        var options = new TensorAttentionOptions { Causal = true, Windows = [3, 5], MaxDegreeOfParallelism = 1 };
        float[] o = new float[shape.OutputLength], lse = new float[2 * 9], dq = new float[q.Length];
        float[][] dk = [new float[k1.Length], new float[k2.Length]], dv = [new float[v1.Length], new float[v2.Length]];
        TensorAttention.Compute(q, [k1, k2], [v1, v2], shape, o, lse, options);
        TensorAttention.Backward(q, [k1, k2], [v1, v2], o, dO, lse, shape, dq, [dk[0], dk[1]], [dv[0], dv[1]], options);
        Assert.Equal(dq, NpzFile.ReadFloat32(output, "dq").Data);
        Assert.Equal(dk[0], NpzFile.ReadFloat32(output, "dk1").Data);
        Assert.Equal(dk[1], NpzFile.ReadFloat32(output, "dk2").Data);
        Assert.Equal(dv[0], NpzFile.ReadFloat32(output, "dv1").Data);
        Assert.Equal(dv[1], NpzFile.ReadFloat32(output, "dv2").Data);
        Assert.Equal([2, 9, 3], NpzFile.ReadFloat32(output, "dv2").Shape);
    }

    [Fact]
    public void Backward_exact_writes_the_librarys_gradients_and_honours_causal_and_scale()
    {
        // 2 heads, nq = 7 != nk = 9, d = 8, dv = 5.
        (string dir, float[] q, float[] k, float[] v, float[] dO) = WriteInputs([2, 7, 8], [2, 9, 8], [2, 9, 5], 11);
        var shape = new AttentionShape(1, 2, 7, 9, 8, 5);
        string plain = Path.Combine(dir, "plain.npz"), masked = Path.Combine(dir, "masked.npz"), twoThreads = Path.Combine(dir, "two.npz");

        (int code, string stdout, string stderr) = Run([.. Inputs(dir), "--out", plain, "--threads", "1", "--json"]);
        Assert.True(code == 0, stderr);
        AssertSame(Library(q, k, v, dO, shape, null, false), Read(plain));
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement r = json.RootElement;
            Assert.Equal("exact", r.GetProperty("method").GetString());
            Assert.Equal([2, 9, 5], r.GetProperty("shapes").GetProperty("dv").EnumerateArray().Select(e => e.GetInt32()));
            Assert.Equal(FlopCount.ExactAttention(1, 2, 7, 9, 8, 5, false), r.GetProperty("forwardFlops").GetDouble());
            Assert.Equal(FlopCount.ExactAttentionBackward(1, 2, 7, 9, 8, 5, false), r.GetProperty("backwardFlops").GetDouble());
            Assert.Equal(r.GetProperty("forwardFlops").GetDouble() + r.GetProperty("backwardFlops").GetDouble(), r.GetProperty("flops").GetDouble());
            Assert.True(r.GetProperty("seconds").GetDouble() > 0);
            Assert.False(string.IsNullOrEmpty(r.GetProperty("kernel").GetString()));
        }

        Assert.Equal(0, Run([.. Inputs(dir), "--out", masked, "--threads", "1", "--causal", "--scale", "0.3"]).Code);
        (float[] Dq, float[] Dk, float[] Dv) causal = Library(q, k, v, dO, shape, 0.3f, true);
        AssertSame(causal, Read(masked));
        Assert.NotEqual(Read(plain).Dq, causal.Dq); // the flags changed the answer

        // The gradients' bits do not depend on the thread count.
        Assert.Equal(0, Run([.. Inputs(dir), "--out", twoThreads, "--threads", "2", "--causal", "--scale", "0.3"]).Code);
        AssertSame(Read(masked), Read(twoThreads));
        Assert.Equal(4 + 3, Directory.GetFiles(dir).Length); // four inputs, three outputs, no temp file left
    }

    [Fact]
    public void Backward_power_writes_the_librarys_gradients()
    {
        (string dir, float[] q, float[] k, float[] v, float[] dO) = WriteInputs([3, 8], [5, 8], [5, 4], 21);
        var shape = new AttentionShape(1, 1, 3, 5, 8, 4);
        string grads = Path.Combine(dir, "g.npz");
        (int code, _, string stderr) = Run([.. Inputs(dir), "--out", grads, "--method", "power", "--power", "3", "--causal", "--scale", "0.5", "--threads", "1"]);
        Assert.True(code == 0, stderr);
        AssertSame(Library(q, k, v, dO, shape, 0.5f, true, power: 3), Read(grads));
        Assert.NotEqual(Library(q, k, v, dO, shape, 0.5f, true).Dq, Read(grads).Dq); // not exact attention's

        // --p is the spelling of --power.
        string spelled = Path.Combine(dir, "p.npz");
        (code, _, stderr) = Run([.. Inputs(dir), "--out", spelled, "--method", "power", "--p", "3", "--causal", "--scale", "0.5", "--threads", "1"]);
        Assert.True(code == 0, stderr);
        AssertSame(Read(grads), Read(spelled));
    }

    public static TheoryData<int[], int[], int[]> Ranks() => new()
    {
        { [1, 1], [1, 1], [1, 1] },
        { [7, 15], [31, 15], [31, 2] },
        { [4, 2, 3], [4, 33, 3], [4, 33, 3] },
        { [2, 4, 5, 8], [2, 2, 6, 8], [2, 2, 6, 3] }, // grouped-query: 4 query heads over 2 kv heads
    };

    [Theory]
    [MemberData(nameof(Ranks))]
    public void Backward_writes_each_gradient_in_its_inputs_shape_for_every_rank(int[] qShape, int[] kShape, int[] vShape)
    {
        (string dir, float[] q, float[] k, float[] v, float[] dO) = WriteInputs(qShape, kShape, vShape, 31);
        int[] q4 = [.. Enumerable.Repeat(1, 4 - qShape.Length), .. qShape], k4 = [.. Enumerable.Repeat(1, 4 - kShape.Length), .. kShape];
        var shape = new AttentionShape(q4[0], q4[1], q4[2], k4[2], q4[3], vShape[^1], k4[1]);
        string grads = Path.Combine(dir, "g.npz");
        (int code, _, string stderr) = Run([.. Inputs(dir), "--out", grads, "--threads", "1"]);
        Assert.True(code == 0, stderr);
        Assert.Equal(["dq", "dk", "dv"], NpzFile.Names(grads));
        Assert.Equal(qShape, NpzFile.ReadFloat32(grads, "dq").Shape);
        Assert.Equal(kShape, NpzFile.ReadFloat32(grads, "dk").Shape);
        Assert.Equal(vShape, NpzFile.ReadFloat32(grads, "dv").Shape);
        AssertSame(Library(q, k, v, dO, shape, null, false), Read(grads));
    }

    [Fact]
    public void Backward_never_writes_onto_an_input_and_takes_only_npz()
    {
        (string dir, _, _, _, _) = WriteInputs([4, 8], [4, 8], [4, 8], 41);
        string npz = Path.Combine(dir, "all.npz");
        NpzFile.Write(npz, [.. new[] { "q", "k", "v", "do" }.Select(n => new KeyValuePair<string, TensorData>(n, NumpyFile.ReadFloat32(Path.Combine(dir, n + ".npy"))))]);
        byte[] before = File.ReadAllBytes(npz);
        foreach (string[] extra in new[] { Array.Empty<string>(), ["--force"] })
        {
            (int code, _, string stderr) = Run([.. new[] { "backward", "--q", npz + ":q", "--k", npz + ":k", "--v", npz + ":v", "--dout", npz + ":do", "--out", npz }, .. extra]);
            Assert.Equal(2, code);
            Assert.Contains("an output never replaces an input", stderr);
        }

        Assert.Equal(before, File.ReadAllBytes(npz));
        (int npyCode, _, string npyErr) = Run([.. Inputs(dir), "--out", Path.Combine(dir, "g.npy")]);
        Assert.Equal(2, npyCode);
        Assert.Contains("--out", npyErr);
        Assert.False(File.Exists(Path.Combine(dir, "g.npy")));
    }

    [Fact]
    public void Backward_names_a_missing_dout_and_mismatched_shapes_with_attends_exit_codes()
    {
        (string dir, _, _, _, _) = WriteInputs([4, 8], [6, 8], [6, 3], 51);
        string grads = Path.Combine(dir, "g.npz");
        string[] noDout = ["backward", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "k.npy"), "--v", Path.Combine(dir, "v.npy"), "--out", grads];
        (int code, _, string stderr) = Run(noDout);
        Assert.Equal(2, code);
        Assert.Contains("--dout is required", stderr);

        // dO in V's shape [6, 3] instead of the output's [4, 3]: a data error naming --dout (attend's exit 3 for shapes).
        (code, _, stderr) = Run([.. noDout, "--dout", Path.Combine(dir, "v.npy")]);
        Assert.Equal(3, code);
        Assert.Contains("--dout has shape [6, 3]", stderr);
        Assert.Contains("[4, 3]", stderr);

        // K with another head dimension: the same wording as attend's.
        (code, _, stderr) = Run(["backward", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "v.npy"), "--v", Path.Combine(dir, "v.npy"), "--dout", Path.Combine(dir, "do.npy"), "--out", grads]);
        (int attendCode, _, string attendErr) = Run(["attend", "--q", Path.Combine(dir, "q.npy"), "--k", Path.Combine(dir, "v.npy"), "--v", Path.Combine(dir, "v.npy"), "--out", Path.Combine(dir, "o.npy")]);
        Assert.Equal(attendCode, code);
        Assert.Equal(attendErr, stderr);
        Assert.Contains("--k has shape [6, 3]", stderr);
        Assert.False(File.Exists(grads));
    }

    [Fact]
    public void Backward_rejects_a_non_finite_dout_unless_allowed()
    {
        (string dir, float[] q, float[] k, float[] v, float[] dO) = WriteInputs([3, 4], [3, 4], [3, 4], 61);
        dO[5] = float.NaN;
        NumpyFile.Write(Path.Combine(dir, "do.npy"), new TensorData<float>(dO, 3, 4));
        string grads = Path.Combine(dir, "g.npz");
        (int code, _, string stderr) = Run([.. Inputs(dir), "--out", grads]);
        Assert.Equal(3, code);
        Assert.Contains("--dout", stderr);
        Assert.False(File.Exists(grads));

        (code, _, stderr) = Run([.. Inputs(dir), "--out", grads, "--allow-nonfinite"]);
        Assert.True(code == 0, stderr);
        Assert.Contains(Read(grads).Dq, x => float.IsNaN(x)); // row 1 of dO is NaN: the NaN propagates into dQ
    }

    [Fact]
    public void A_method_without_a_backward_says_so_in_one_line()
    {
        (string dir, _, _, _, _) = WriteInputs([4, 8], [4, 8], [4, 8], 71);
        Assert.Contains(MethodTable.All, m => !m.HasBackward);
        foreach (MethodEntry entry in MethodTable.All.Where(m => !m.HasBackward))
        {
            string[] setting = entry.Name == "lev" ? ["--top", "2"] : [];
            string[] inputs = entry.IsTensor ? [.. Inputs(dir).Select(a => a is "--k" ? "--k1" : a is "--v" ? "--v1" : a), "--k2", Path.Combine(dir, "k.npy"), "--v2", Path.Combine(dir, "v.npy")] : Inputs(dir);
            (int code, string stdout, string stderr) = Run([.. inputs, "--out", Path.Combine(dir, "g.npz"), "--method", entry.Name, .. setting]);
            Assert.Equal(2, code);
            Assert.Equal($"fastattn: backward: --method {MethodTable.NoBackward(entry.Name)}", stderr.TrimEnd());
            Assert.Empty(stdout);
        }

        Assert.False(File.Exists(Path.Combine(dir, "g.npz")));
        (int help, string text, _) = Run("backward", "--help");
        Assert.Equal(0, help);
        Assert.All(MethodTable.Names, name => Assert.Contains(name + ":", text));
    }

    [Fact]
    public void Bench_backward_reports_the_pair_and_the_backward_alone()
    {
        (int code, string stdout, string stderr) = Run("bench", "--backward", "--n", "33", "--d", "15", "--heads", "2", "--causal", "--repeat", "3", "--threads", "1", "--json");
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement r = json.RootElement;
            double median = r.GetProperty("medianSeconds").GetDouble(), backward = r.GetProperty("backwardMedianSeconds").GetDouble();
            Assert.Equal("forward+backward", r.GetProperty("pass").GetString());
            Assert.Equal(FlopCount.ExactAttention(1, 2, 33, 33, 15, 15, true), r.GetProperty("forwardFlops").GetDouble());
            Assert.Equal(FlopCount.ExactAttentionBackward(1, 2, 33, 33, 15, 15, true), r.GetProperty("backwardFlops").GetDouble());
            Assert.Equal(r.GetProperty("forwardFlops").GetDouble() + r.GetProperty("backwardFlops").GetDouble(), r.GetProperty("flops").GetDouble());
            Assert.Equal(r.GetProperty("flops").GetDouble() / median / 1e9, r.GetProperty("gflops").GetDouble(), 9);
            Assert.InRange(backward, 1e-9, median);
            Assert.Equal(r.GetProperty("backwardFlops").GetDouble() / backward / 1e9, r.GetProperty("backwardGflops").GetDouble(), 9);
            Assert.Equal(100 * r.GetProperty("backwardGflops").GetDouble() / r.GetProperty("peakGflops").GetDouble(), r.GetProperty("backwardPercentOfPeak").GetDouble(), 9);
            Assert.False(string.IsNullOrEmpty(r.GetProperty("cpu").GetString()));
        }

        (code, stdout, _) = Run("bench", "--n", "33", "--repeat", "3", "--json");
        Assert.Equal(0, code);
        using (JsonDocument forward = JsonDocument.Parse(stdout))
        {
            Assert.False(forward.RootElement.TryGetProperty("backwardMedianSeconds", out _));
        }

        (code, _, stderr) = Run("bench", "--backward", "--method", "tensor-poly", "--n", "33");
        Assert.Equal(2, code);
        Assert.Contains("tensor-poly has no backward yet", stderr);
        Assert.Equal(2, Run("bench", "--backward", "--method", "gemm", "--n", "33").Code);
    }
}
