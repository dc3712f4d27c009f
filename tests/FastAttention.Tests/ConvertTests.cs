using System.Text.Json;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary><c>fastattn convert</c> and the type-preserving readers behind it.</summary>
public class ConvertTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    private static string Format(string name) => Data.Fixture("formats", name);

    [Fact]
    public void Readers_keep_each_element_type_exactly()
    {
        Assert.IsType<TensorData<double>>(NumpyFile.Read(Format("f8.npy")));
        Assert.IsType<TensorData<float>>(NumpyFile.Read(Format("f4.npy")));
        Assert.IsType<TensorData<float>>(NumpyFile.Read(Format("f2.npy")));
        Assert.IsType<TensorData<long>>(NumpyFile.Read(Format("i4.npy")));
        Assert.IsType<TensorData<long>>(NumpyFile.Read(Format("u1.npy")));
        Assert.Equal(NumpyFile.ReadFloat64(Format("f8.npy")).Data, ((TensorData<double>)NumpyFile.Read(Format("f8.npy"))).Data);
        Assert.Equal(NumpyFile.ReadInt64(Format("i8.npy")).Data, ((TensorData<long>)NumpyFile.Read(Format("i8.npy"))).Data);
        Assert.Equal(NumpyFile.ReadFloat32(Format("f4_fortran.npy")).Data, ((TensorData<float>)NumpyFile.Read(Format("f4_fortran.npy"))).Data);

        IReadOnlyList<KeyValuePair<string, TensorData>> mixed = SafeTensorsFile.ReadAll(Format("mixed.safetensors"));
        Assert.Equal(SafeTensorsFile.Names(Format("mixed.safetensors")), mixed.Select(t => t.Key));
        IReadOnlyList<KeyValuePair<string, TensorData>> npz = NpzFile.ReadAll(Format("compressed.npz"));
        Assert.Equal(NpzFile.Names(Format("compressed.npz")), npz.Select(t => t.Key));
    }

    [Fact]
    public void Npy_to_npz_to_safetensors_and_back_is_lossless_for_every_type()
    {
        string dir = Data.TempDir();
        var f8 = new TensorData<double>([Math.PI, -1e-300, 1e300, 0.1], 2, 2);
        var i8 = new TensorData<long>([long.MaxValue, long.MinValue, 7], 3);
        var f4 = new TensorData<float>([1.5f, float.Epsilon, -0f, 3e38f, 1f / 3], 5);
        string npz = Path.Combine(dir, "all.npz");
        NpzFile.Write(npz, [new("f8", f8), new("i8", i8), new("f4", f4)]);

        string st = Path.Combine(dir, "all.safetensors");
        (int code, string stdout, string stderr) = Run("convert", npz, "--out", st, "--json");
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            Assert.Equal(["float64", "int64", "float32"], json.RootElement.GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("dtype").GetString()));
        }

        string back = Path.Combine(dir, "back.npz");
        Assert.Equal(0, Run("convert", st, "--out", back, "--compress").Code);
        string one = Path.Combine(dir, "i8.npy");
        Assert.Equal(0, Run("convert", back + ":i8", "--out", one).Code);

        IReadOnlyList<KeyValuePair<string, TensorData>> round = NpzFile.ReadAll(back);
        Assert.Equal(f8.Data, ((TensorData<double>)round[0].Value).Data);
        Assert.Equal([2, 2], round[0].Value.Shape);
        Assert.Equal(i8.Data, ((TensorData<long>)round[1].Value).Data);
        Assert.Equal(f4.Data, ((TensorData<float>)round[2].Value).Data);
        Assert.Equal(i8.Data, ((TensorData<long>)NumpyFile.Read(one)).Data);
        Assert.Equal(4, Directory.GetFiles(dir).Length); // no temp files
    }

    [Fact]
    public void Float16_widens_to_float32_and_npy_input_takes_its_file_name_or_name()
    {
        string dir = Data.TempDir();
        string st = Path.Combine(dir, "h.safetensors");
        Assert.Equal(0, Run("convert", Format("f2.npy"), "--out", st).Code);
        Assert.Equal(["f2"], SafeTensorsFile.Names(st));
        Assert.Equal(NumpyFile.ReadFloat32(Format("f2.npy")).Data, SafeTensorsFile.ReadFloat32(st, "f2").Data);

        string named = Path.Combine(dir, "named.npz");
        Assert.Equal(0, Run("convert", "--in", Format("f4.npy"), "--out", named, "--name", "query").Code);
        Assert.Equal(["query"], NpzFile.Names(named));
    }

    [Fact]
    public void Safetensors_metadata_survives_a_safetensors_round_trip()
    {
        string dir = Data.TempDir();
        string a = Path.Combine(dir, "a.safetensors"), b = Path.Combine(dir, "b.safetensors");
        SafeTensorsFile.Write(a, [new("x", new TensorData<float>([1f, 2f], 2))], new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(0, Run("convert", a, "--out", b).Code);
        Assert.Equal("pt", SafeTensorsFile.Metadata(b)["format"]);
    }

    [Fact]
    public void Bad_requests_get_one_clear_line_and_touch_nothing()
    {
        string dir = Data.TempDir();
        string existing = Path.Combine(dir, "exists.npy");
        File.WriteAllText(existing, "keep me");

        (int code, _, string err) = Run("convert", Format("compressed.npz"), "--out", Path.Combine(dir, "x.npy"));
        Assert.Equal(2, code);
        Assert.Contains("holds", err);
        Assert.Contains(":NAME", err);

        (code, _, err) = Run("convert", Format("f4.npy"), "--out", existing);
        Assert.Equal(2, code);
        Assert.Contains("--force", err);
        Assert.Equal("keep me", File.ReadAllText(existing));

        (code, _, err) = Run("convert", Format("f4.npy"), "--out", Path.Combine(dir, "x.csv"));
        Assert.Equal(2, code);
        Assert.Contains(".safetensors", err);

        (code, _, err) = Run("convert", Format("compressed.npz") + ":nope", "--out", Path.Combine(dir, "y.npz"));
        Assert.Equal(3, code);
        Assert.Contains("nope", err);

        (code, _, err) = Run("convert", Path.Combine(dir, "missing.npy"), "--out", Path.Combine(dir, "z.npz"));
        Assert.Equal(3, code);
        Assert.Contains("missing.npy", err);

        string garbage = Path.Combine(dir, "garbage.npy");
        File.WriteAllBytes(garbage, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        (code, _, err) = Run("convert", garbage, "--out", Path.Combine(dir, "g.npz"));
        Assert.Equal(3, code);
        Assert.Contains("garbage.npy", err);

        Assert.Equal(["exists.npy", "garbage.npy"], Directory.GetFiles(dir).Select(Path.GetFileName).Order());
    }
}
