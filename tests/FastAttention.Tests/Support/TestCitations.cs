using System.Reflection;
using System.Text.RegularExpressions;

namespace FastAttention.Tests.Support;

/// <summary>The tests docs/algorithms.md cites and the tests an assembly holds, as <c>Class.Method</c> names.</summary>
internal static class TestCitations
{
    /// <summary>Asserts that docs/algorithms.md cites at least <paramref name="minimum"/> tests by <paramref name="pattern"/> and that each is a test of <paramref name="assembly"/>.</summary>
    public static void AssertCitedTestsExist(Assembly assembly, Regex pattern, int minimum)
    {
        HashSet<string> tests = TestsIn(assembly);
        string[] cited = Cited(pattern);
        Assert.True(cited.Length >= minimum, $"only {cited.Length} tests of {assembly.GetName().Name} cited");
        string[] unknown = [.. cited.Where(name => !tests.Contains(name))];
        Assert.True(unknown.Length == 0, $"docs/algorithms.md cites tests {assembly.GetName().Name} does not have: " + string.Join(", ", unknown));
    }

    /// <summary>Every <c>[Fact]</c> or <c>[Theory]</c> of <paramref name="assembly"/>.</summary>
    public static HashSet<string> TestsIn(Assembly assembly) => [.. assembly.GetTypes()
        .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
            .Where(m => m.GetCustomAttributes<FactAttribute>(inherit: true).Any())
            .Select(m => t.Name + "." + m.Name))];

    /// <summary>The distinct names <paramref name="pattern"/> (groups <c>class</c> and <c>method</c>) finds in docs/algorithms.md.</summary>
    public static string[] Cited(Regex pattern)
    {
        string notes = File.ReadAllText(Path.Combine(Data.RepoRoot, "docs", "algorithms.md"));
        return [.. pattern.Matches(notes).Select(m => m.Groups["class"].Value + "." + m.Groups["method"].Value).Distinct()];
    }
}
