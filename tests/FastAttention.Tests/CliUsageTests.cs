using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Usage errors (exit 2, one line, before any file is touched), options of other methods, kernels and help.</summary>
public class CliUsageTests : CliTest
{
    [Theory]
    [InlineData("exact", "--top", "5", "--top applies to --method lev, not exact")]
    [InlineData("exact", "--eps", "0.01", "--eps applies to --method poly or lev or auto, not exact")]
    [InlineData("poly", "--seed", "3", "--seed applies to --method sketch, not poly")]
    [InlineData("lev", "--degree", "3", "--degree applies to --method poly, not lev")]
    [InlineData("sketch", "--kernel", "tiled-v256", "--kernel applies to --method exact or power, not sketch")]
    [InlineData("auto", "--kernel", "tiled-v256", "--kernel applies to --method exact or power, not auto")]
    [InlineData("lev", "--causal", null, "--causal applies to --method exact or poly or sketch or power or auto, not lev")]
    [InlineData("exact", "--power", "3", "--power applies to --method power, not exact")]
    public void Attend_rejects_an_option_of_another_method_instead_of_ignoring_it(string method, string option, string? value, string message)
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "o.npy");
        string[] given = value is null ? [option] : [option, value];
        (int code, _, string err) = Run(["attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--method", method, .. given]);
        Assert.Equal(2, code);
        Assert.Contains(message, err);
        Assert.False(File.Exists(outPath));
    }


    [Theory]
    [InlineData("poly", "--kernel", "tiled-v256", "--kernel applies to --method exact or power, not poly")]
    [InlineData("exact", "--eps", "0.01", "--eps applies to --method poly or lev or tensor-poly, not exact")]
    [InlineData("gemm", "--causal", null, "--causal applies to --method exact or poly or sketch or power or tensor or tensor-poly, not gemm")]
    [InlineData("leverage", "--heads", "4", "--heads applies to --method exact or poly or sketch or lev or power or tensor or tensor-poly, not leverage")]
    [InlineData("gemm", "--d", "8", "--d applies to --method exact or poly or sketch or lev or power or tensor or tensor-poly or leverage, not gemm")]
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
    public void An_unknown_kernel_is_a_usage_error_listing_the_kernels()
    {
        string dir = Data.TempDir();
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"), "--kernel", "foo");
        Assert.Equal(2, code);
        foreach (string kernel in AttentionKernels.Names)
        {
            Assert.Contains(kernel, err);
        }

        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Theory]
    [InlineData("attend --thread 2", "did you mean --threads?")]
    [InlineData("atend", "did you mean attend?")]
    [InlineData("bench --methd exact", "did you mean --method?")]
    public void Typos_get_a_suggestion(string line, string suggestion)
    {
        (int code, _, string err) = Run(line.Split(' '));
        Assert.Equal(2, code);
        Assert.Contains(suggestion, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void Threads_above_the_core_count_are_capped_with_a_notice()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "o.npy");
        (int code, string stdout, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--threads", "4096", "--json");
        Assert.Equal(0, code);
        Assert.Contains($"using {Environment.ProcessorCount}", err);
        using var json = System.Text.Json.JsonDocument.Parse(stdout);
        Assert.Equal(Environment.ProcessorCount, json.RootElement.GetProperty("threads").GetInt32());
    }

    [Fact]
    public void Help_lists_every_method_of_the_table_and_an_unknown_method_is_a_usage_error_naming_them()
    {
        (int code, string stdout, _) = Run("attend", "--help");
        Assert.Equal(0, code);
        foreach (string method in FastAttention.Lab.MethodTable.All.Where(m => !m.IsTensor).Select(m => m.Name).Append("auto"))
        {
            Assert.Contains(method + ":", stdout);
        }

        (code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", "o.npy", "--method", "magic");
        Assert.Equal(2, code);
        Assert.Contains("'lev'", err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void Bench_checks_every_option_before_its_output_and_before_reading_a_file()
    {
        string dir = Data.TempDir();
        string existing = Path.Combine(dir, "o.npy");
        File.WriteAllText(existing, "keep me");
        (int code, _, string err) = Run("bench", "--n", "64", "--out", existing, "--kernel", "foo");
        Assert.Equal(2, code);
        Assert.Contains("not a kernel", err);
        (code, _, err) = Run("bench", "--n", "64", "--out", existing, "--method", "lev");
        Assert.Equal(2, code);
        Assert.Contains("exactly one of --eps", err);
        Assert.Equal("keep me", File.ReadAllText(existing));

        // Inputs from files: all three or none, and the files give the shape.
        (code, _, err) = Run("bench", "--q", Path.Combine(dir, "missing.npy"));
        Assert.Equal(2, code);
        Assert.Contains("need all of --q, --k, --v", err);
        (code, _, err) = Run("bench", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--n", "20");
        Assert.Equal(2, code);
        Assert.Contains("--n sets the shape of random inputs", err);
        (code, _, err) = Run("bench", "--n", "64", "--k", Ocr("k.npy"));
        Assert.Equal(2, code);
    }

    [Fact]
    public void Every_usage_error_names_its_command()
    {
        (int code, _, string err) = Run("attend", "--q", "a", "--k", "b", "--v", "c", "--out", "o.npy", "--threads", "0");
        Assert.Equal(2, code);
        Assert.StartsWith("fastattn: attend: --threads", err);
    }
}

