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
        TestCitations.AssertCitedTestsExist(typeof(AlgorithmNotesTests).Assembly, TestName(), minimum: 50);
    }
}
