using System.Reflection;
using System.Text.RegularExpressions;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>docs/algorithms.md names, for each computation, the tests that check it: every name must be a test of this assembly.</summary>
public partial class AlgorithmNotesTests
{
    [GeneratedRegex(@"`(?<class>[A-Z][A-Za-z0-9]*Tests)\.(?<method>[A-Za-z0-9_]+)`")]
    private static partial Regex TestName();

    [Fact]
    public void Every_test_the_algorithm_notes_cite_exists()
    {
        string notes = File.ReadAllText(Path.Combine(Data.RepoRoot, "docs", "algorithms.md"));
        HashSet<string> tests = [.. typeof(AlgorithmNotesTests).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                .Where(m => m.GetCustomAttributes<FactAttribute>(inherit: true).Any())
                .Select(m => t.Name + "." + m.Name))];
        string[] cited = [.. TestName().Matches(notes).Select(m => m.Groups["class"].Value + "." + m.Groups["method"].Value).Distinct()];
        Assert.True(cited.Length >= 50, $"only {cited.Length} tests cited");
        string[] unknown = [.. cited.Where(name => !tests.Contains(name))];
        Assert.True(unknown.Length == 0, "docs/algorithms.md cites tests that do not exist: " + string.Join(", ", unknown));
    }
}
