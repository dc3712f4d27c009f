using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// <c>tools/fuzz.sh</c> builds the SharpFuzz harness, instruments the readers and runs AFL++ on every parser's committed
/// seeds: a short run must end with no crash, hang or oversized allocation. (The long runs are recorded in docs/fuzzing.md.)
/// </summary>
[Trait("Category", "Slow")]
public class FuzzScriptTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(10);

    [Fact]
    public void A_short_run_of_every_target_finds_nothing_and_grows_each_corpus()
    {
        string dir = Data.TempDir();
        (int code, string output) = Processes.Run("bash", ["tools/fuzz.sh", "--seconds", "5", "--target", "all", "--out", dir], Data.RepoRoot, Limit);
        Assert.True(code == 0, "tools/fuzz.sh failed:\n" + output);
        Assert.Contains("fuzz: no findings (npy npz safetensors, 5 s each)", output);
        foreach (string target in new[] { "npy", "npz", "safetensors" })
        {
            // AFL++ only adds inputs that reach new code: a corpus that grew past its seeds shows the readers were instrumented.
            int seeds = Directory.GetFiles(Path.Combine(Data.RepoRoot, "fuzz", "seeds", target)).Length;
            string line = output.Split('\n').Single(l => l.StartsWith(target + ":", StringComparison.Ordinal));
            int corpus = int.Parse(line.Split(", ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            Assert.True(corpus > seeds, $"{target}: the corpus did not grow past its {seeds} seeds: {line}");
        }
    }

    [Theory]
    [InlineData("--seconds", "abc", "is not a positive whole number")]
    [InlineData("--target", "csv", "is not npy, npz, safetensors or all")]
    public void Bad_arguments_get_one_line_and_exit_code_2(string flag, string value, string message)
    {
        (int code, string output) = Processes.Run("bash", ["tools/fuzz.sh", flag, value], Data.RepoRoot, TimeSpan.FromMinutes(1));
        Assert.Equal(2, code);
        Assert.Contains(message, output);
        Assert.Single(output.Trim().Split('\n'));
    }
}
