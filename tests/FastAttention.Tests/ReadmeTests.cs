using System.Text.RegularExpressions;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Runs every <c>fastattn</c> example of the README's console blocks, in process, from the repository root.</summary>
[Trait("Category", "Slow")]
public partial class ReadmeTests
{
    [GeneratedRegex("```console\\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex ConsoleBlock();

    public static TheoryData<string> Examples()
    {
        var data = new TheoryData<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal); // a command shown twice (tour and reference) runs once
        string readme = File.ReadAllText(Path.Combine(Data.RepoRoot, "README.md"));
        foreach (Match block in ConsoleBlock().Matches(readme))
        {
            foreach (string line in block.Groups[1].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (line.StartsWith("fastattn ", StringComparison.Ordinal) && seen.Add(line))
                {
                    data.Add(line);
                }
            }
        }

        return data;
    }

    [Fact]
    public void Readme_has_the_two_commands_near_the_top_and_examples()
    {
        string readme = File.ReadAllText(Path.Combine(Data.RepoRoot, "README.md"));
        string top = readme[..Math.Min(readme.Length, 1200)];
        Assert.Contains("dotnet run --project src/FastAttention.Cli -c Release -- demo", top);
        Assert.Contains("dotnet test -c Release", top);
        Assert.True(Examples().Count >= 4);
    }

    [Fact]
    public void Readme_results_are_the_committed_reports_summary()
    {
        string readme = File.ReadAllText(Path.Combine(Data.RepoRoot, "README.md")).ReplaceLineEndings("\n");
        string report = File.ReadAllText(Path.Combine(Data.RepoRoot, "docs", "experiments", "report.md")).ReplaceLineEndings("\n");
        string[] results = TableAfter(readme, "## Results");
        Assert.True(results.Length >= 10, "README's results table is missing");
        Assert.Equal(TableAfter(report, "## Summary"), results);
        Assert.Contains("docs/experiments/report.html", readme);
    }

    /// <summary>The first pipe table after <paramref name="heading"/>.</summary>
    private static string[] TableAfter(string text, string heading)
    {
        int at = text.IndexOf("\n" + heading + "\n", StringComparison.Ordinal);
        Assert.True(at >= 0, $"no '{heading}' section");
        return [.. text[at..].Split('\n').SkipWhile(l => !l.StartsWith('|')).TakeWhile(l => l.StartsWith('|'))];
    }

    [Theory]
    [MemberData(nameof(Examples))]
    public void Readme_example_runs(string line)
    {
        string dir = Data.TempDir();
        string[] words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..];
        for (int i = 0; i < words.Length; i++)
        {
            if (words[i].StartsWith("data/", StringComparison.Ordinal))
            {
                words[i] = Path.Combine(Data.RepoRoot, words[i]);
            }
            else if (i > 0 && words[i - 1] == "--out")
            {
                words[i] = Path.Combine(dir, words[i]);
            }
        }

        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = FastAttention.Cli.Cli.Run(words, stdout, stderr);
        Assert.True(code == 0, $"'{line}' exited {code}: {stderr}");
        Assert.NotEmpty(stdout.ToString());
    }
}
