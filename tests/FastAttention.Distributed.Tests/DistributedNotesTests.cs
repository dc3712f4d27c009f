using System.Text.RegularExpressions;
using FastAttention.Tests.Support;

namespace FastAttention.Distributed.Tests;

/// <summary>docs/algorithms.md §9 cites this project's tests as <c>Distributed.Class.Method</c>: every such name must be a test here.</summary>
public partial class DistributedNotesTests
{
    [GeneratedRegex(@"`Distributed\.(?<class>[A-Z][A-Za-z0-9]*Tests)\.(?<method>[A-Za-z0-9_]+)`")]
    private static partial Regex TestName();

    [Fact]
    public void Every_distributed_test_the_algorithm_notes_cite_exists()
    {
        TestCitations.AssertCitedTestsExist(typeof(DistributedNotesTests).Assembly, TestName(), minimum: 5);
    }
}
