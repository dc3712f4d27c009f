using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>`fastattn experiment`: reports written, never overwritten without --force.</summary>
[Trait("Category", "Slow")]
public class CliExperimentTests : CliTest
{
    [Fact]
    public void Experiments_write_markdown_and_svg_and_never_overwrite_without_force()
    {
        string dir = Data.TempDir();
        (int code, string stdout, string stderr) = Run("experiment", "sketch", "--out", dir, "--threads", "2");
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "sketch.md"));
        Assert.Matches(@"!\[[^\]]{40,}\]\(sketch-error\.svg\)", markdown); // a caption that says what to read, not the axis label again
        Assert.Contains("| 64 | 128 |", markdown);
        System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, "sketch-error.svg")));
        Assert.Contains("d=64 m=128", stdout);

        // A second run refuses to overwrite, leaving the files as they were.
        (code, _, stderr) = Run("experiment", "sketch", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--force", stderr);
        Assert.Equal(markdown, File.ReadAllText(Path.Combine(dir, "sketch.md")));

        Assert.Equal(2, Run("experiment", "nonsense").Code);
        Assert.Equal(2, Run("experiment").Code);

        // An --out that cannot be a folder fails at once, before any computing.
        string file = Path.Combine(dir, "a-file");
        File.WriteAllText(file, "x");
        (code, _, stderr) = Run("experiment", "bounded-entries", "--out", Path.Combine(file, "sub"));
        Assert.Equal(2, code);
        Assert.Contains("cannot create the folder", stderr);
        Assert.False(Directory.Exists(Path.Combine(file, "sub")));
    }

    [Fact]
    public void Bounded_entries_experiment_reports_errors_inside_their_certificates()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "bounded-entries", "--out", dir);
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "bounded-entries.md"));
        foreach (string svg in new[] { "bounded-entries-time.svg", "bounded-entries-error.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }

        // Every measured (a) row: error <= certificate <= 1/n.
        int checkedRows = 0;
        foreach (string line in markdown.Split('\n').Where(l => l.StartsWith("| 2^", StringComparison.Ordinal) && l.Count(c => c == '|') == 14))
        {
            string[] cells = [.. line.Split('|').Select(c => c.Trim())];
            if (double.TryParse(cells[9], System.Globalization.CultureInfo.InvariantCulture, out double error))
            {
                double bound = double.Parse(cells[10], System.Globalization.CultureInfo.InvariantCulture);
                double n = Math.Pow(2, int.Parse(cells[1][2..], System.Globalization.CultureInfo.InvariantCulture));
                Assert.True(error <= bound && bound <= 1 / n, line);
                checkedRows++;
            }
        }

        Assert.True(checkedRows >= 6, $"only {checkedRows} measured rows");
    }

    [Fact]
    public void Tensor_experiment_writes_its_three_parts()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "tensor", "--out", dir);
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "tensor.md"));
        foreach (string svg in new[] { "tensor-time.svg", "tensor-budget.svg", "tensor-match3.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }

        Assert.Contains("**Crossover**", markdown);
        Assert.Contains("| 128 | 10000 | 100.0 % |", markdown); // Match3 solved at large lambda
    }

    [Fact]
    public void Levattention_experiment_reports_the_guarantee_holding_on_the_ocr_tensors()
    {
        string dir = Data.TempDir();
        (int code, _, string stderr) = Run("experiment", "levattention", "--out", dir, "--data", Path.Combine(Data.RepoRoot, "data"));
        Assert.True(code == 0, stderr);
        string markdown = File.ReadAllText(Path.Combine(dir, "levattention.md"));
        Assert.Contains("Every one is in U, as the theorem says.", markdown);
        Assert.Contains("| line260/block2 |", markdown);
        foreach (string svg in new[] { "levattention-size.svg", "levattention-stream-time.svg", "levattention-stream-workspace.svg", "levattention-recall.svg", "levattention-error.svg" })
        {
            Assert.Contains($"]({svg})", markdown);
            System.Xml.Linq.XDocument.Parse(File.ReadAllText(Path.Combine(dir, svg)));
        }
    }

    [Fact]
    public void Data_and_repo_options_are_checked_before_anything_runs()
    {
        string dir = Data.TempDir();
        string missing = Path.Combine(dir, "no-such-folder");
        (int code, _, string err) = Run("experiment", "sketch", "--out", Path.Combine(dir, "a"), "--data", Path.Combine(Data.RepoRoot, "data"));
        Assert.Equal(2, code);
        Assert.Contains("--data applies to levattention", err);
        (code, _, err) = Run("experiment", "levattention", "--out", Path.Combine(dir, "b"), "--data", missing);
        Assert.Equal(2, code);
        Assert.Contains("no such folder", err);
        (code, _, err) = Run("report", "--out", Path.Combine(dir, "c"), "--repo", missing);
        Assert.Equal(2, code);
        Assert.Contains("--repo", err);
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }
}

