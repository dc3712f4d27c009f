using System.Text.RegularExpressions;
using FastAttention.Tests.Support;

namespace FastAttention.Torch.Tests;

/// <summary>docs/algorithms.md cites this project's tests as <c>Torch.Class.Method</c>: every such name must be a test here.</summary>
public partial class TorchNotesTests
{
    [GeneratedRegex(@"`Torch\.(?<class>[A-Z][A-Za-z0-9]*Tests)\.(?<method>[A-Za-z0-9_]+)`")]
    private static partial Regex TestName();

    [Fact]
    public void Every_libtorch_test_the_algorithm_notes_cite_exists()
    {
        TestCitations.AssertCitedTestsExist(typeof(TorchNotesTests).Assembly, TestName(), minimum: 4);
    }
}
