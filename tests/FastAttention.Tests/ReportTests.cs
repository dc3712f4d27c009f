using System.Text.RegularExpressions;
using FastAttention.Lab.Reports;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>The markdown-to-HTML writer of the report.</summary>
public class MarkdownHtmlTests
{
    private const string Svg = "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><path d=\"M0 0L10 10\"/></svg>";

    [Fact]
    public void Converts_the_subset_the_reports_use_and_inlines_the_plots()
    {
        string md = "# Title\n\nSome `code` and **holds** and [a link](docs/x.md).\nSame paragraph.\n\n- one\n- two <b>\n\n| a | b \\| c |\n|---|---|\n| 1 | 2 |\n\n![plot one](one.svg)\n\n![absent](gone.svg)\n";
        string html = MarkdownHtml.Page("t", md, name => name == "one.svg" ? Svg : null);
        Assert.Contains("<h1 id=\"title\">Title</h1>", html);
        Assert.Contains("<p>Some <code>code</code> and <strong class=\"v-holds\">holds</strong> and <a href=\"docs/x.md\">a link</a>. Same paragraph.</p>", html);
        Assert.Contains("<li>two &lt;b&gt;</li>", html);
        Assert.Contains("<th>b | c</th>", html);
        Assert.Contains("<td>2</td>", html);
        Assert.DoesNotContain("<td>---</td>", html);
        Assert.Contains("<figure role=\"img\" aria-label=\"plot one\"><svg", html);
        Assert.DoesNotContain("<?xml", html);
        Assert.Contains("missing figure: absent", html);
    }

    [Fact]
    public void Every_point_tables_and_long_tables_fold_away_and_short_ones_stay_open()
    {
        string rows = string.Concat(Enumerable.Range(0, 30).Select(i => $"| {i} | x |\n"));
        string md = $"## Summary\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Every point\n\n| a | b |\n|---|---|\n| 3 | 4 |\n\n## Reading it\n\n| a | b |\n|---|---|\n{rows}";
        string html = MarkdownHtml.Page("t", md, _ => null);
        Assert.Equal(2, Regex.Matches(html, "<details>").Count);
        Assert.Contains("<details><summary>Every point: 1 row (click to show)</summary>", html);
        Assert.Contains("<details><summary>The table: 30 rows (click to show)</summary>", html);
        Assert.Matches("</h2>\\s*<table>\\s*<tr><th>a</th>", html); // the summary's table is open
    }

    [Fact]
    public void Headings_get_githubs_anchors_so_contents_links_work_in_both_renderings()
    {
        Assert.Equal("1-fast-attention-requires-bounded-entries-alman--song", MarkdownHtml.Slug("1. Fast Attention Requires Bounded Entries (Alman & Song)"));
        string html = MarkdownHtml.Page("t", "## Verdicts\n\n## Verdicts\n\n## `code` and **bold**\n\n[Go](#verdicts-1)", _ => null);
        Assert.Contains("<h2 id=\"verdicts\">", html);
        Assert.Contains("<h2 id=\"verdicts-1\">", html);
        Assert.Contains("<h2 id=\"code-and-bold\">", html);
        Assert.Contains("<a href=\"#verdicts-1\">Go</a>", html);
    }

    [Fact]
    public void The_page_loads_nothing_from_anywhere()
    {
        string html = MarkdownHtml.Page("t", "[x](javascript:alert(1)) [y](https://example.org) ![p](p.svg)", _ => Svg);
        Assert.DoesNotContain("javascript:", html);
        Assert.DoesNotMatch("<(img|link|script)[^>]+(src|href)=", html);
    }
}

/// <summary>Runs <c>fastattn report</c> once (quick sizes) for the tests below.</summary>
public sealed class ReportFixture
{
    public ReportFixture()
    {
        Directory = Data.TempDir();
        (Code, Output, Errors) = CliRun.Run("report", "--out", Directory, "--repo", Data.RepoRoot);
    }

    public string Directory { get; }

    public int Code { get; }

    public string Output { get; }

    public string Errors { get; }
}

/// <summary>The whole report, end to end, and rendered by a real browser (Chromium; required under CI).</summary>
[Trait("Category", "Slow")]
public partial class ReportTests(ReportFixture report) : IClassFixture<ReportFixture>
{
    [GeneratedRegex(@"!\[[^\]]*\]\((?<file>[^)]+\.svg)\)")]
    private static partial Regex Figure();

    [Fact]
    public void Report_writes_html_and_markdown_with_every_claim_judged_and_every_plot()
    {
        Assert.True(report.Code == 0, report.Errors);
        string md = File.ReadAllText(Path.Combine(report.Directory, "report.md"));
        string html = File.ReadAllText(Path.Combine(report.Directory, "report.html"));

        foreach (string paper in new[] { "Fast Attention Requires Bounded Entries", "tensor", "LevAttention" })
        {
            Assert.Contains(paper, md);
        }

        Assert.Contains("## Summary", md);
        Assert.Contains("## Benchmarks", md);
        Assert.Contains("FastAttention's exact kernel, this run", md);
        int verdicts = Regex.Matches(md, @"\*\*(holds|partly|does not hold|not measured)\*\* \|").Count;
        Assert.True(verdicts >= 2 * 14, $"each claim in the summary and in its experiment's section: {verdicts} verdict cells");

        // Every verdict cell of every claims table holds one of the four verdicts, and nothing else.
        string[] lines = md.ReplaceLineEndings("\n").Split('\n');
        string[] claimRows = [.. lines.Where(l => l.StartsWith("| ", StringComparison.Ordinal) && Regex.IsMatch(l, @"\| \*\*[^*]*\*\* \|$"))];
        Assert.Equal(verdicts, claimRows.Length);
        Assert.All(claimRows, row => Assert.Contains(Regex.Match(row, @"\*\*(?<v>[^*]*)\*\* \|$").Groups["v"].Value, Claim.Texts));

        // The summary's counts are those of its table, and each of its rows is the claim's row in its experiment's section.
        string[] summary = [.. lines.SkipWhile(l => l != "## Summary").Skip(1).SkipWhile(l => !l.StartsWith('|')).Skip(2).TakeWhile(l => l.StartsWith('|'))];
        Assert.True(summary.Length >= 14, $"{summary.Length} claims in the summary");
        int Count(string verdict) => summary.Count(l => l.EndsWith($"**{verdict}** |", StringComparison.Ordinal));
        string counts = $"{Count("holds")} of {summary.Length} claims hold, {Count("partly")} partly, {Count("does not hold")} do not hold, {Count("not measured")} not measured.";
        Assert.Contains(counts, md);
        Assert.Contains(counts, report.Output);
        string[] sections = [.. lines.SkipWhile(l => l != "## Summary").Skip(1).SkipWhile(l => !l.StartsWith('|')).SkipWhile(l => l.StartsWith('|'))];
        string[] benchmark = [.. summary.Where(l => l.Contains("ONNX Runtime", StringComparison.Ordinal))];
        Assert.Single(benchmark);
        Assert.All(summary.Except(benchmark), row => Assert.Contains(row, sections));
        Assert.Equal(summary.Length - 1, sections.Count(l => claimRows.Contains(l)));

        string[] figures = [.. Figure().Matches(md).Select(m => m.Groups["file"].Value).Distinct()];
        Assert.True(figures.Length >= 10, $"{figures.Length} figures");
        foreach (string file in figures)
        {
            Assert.True(File.Exists(Path.Combine(report.Directory, file)), file);
        }

        Assert.Equal(figures.Length, Regex.Matches(html, "<figure").Count);
        string[] ids = [.. Regex.Matches(html, "<h[1-6] id=\"([^\"]+)\"").Select(m => m.Groups[1].Value)];
        string[] links = [.. Regex.Matches(html, "<a href=\"#([^\"]+)\"").Select(m => m.Groups[1].Value)];
        Assert.True(links.Length >= 5, "the contents line is missing");
        Assert.All(links, link => Assert.Contains(link, ids));
        Assert.DoesNotContain("missing figure", html);

        // One number format (NumberText): no exponent written as .NET's E2 ("1.61E-005"), with one digit or a lowercase e.
        Match other = NumberTextTests.OtherExponent().Match(md);
        Assert.False(other.Success, $"report.md writes a number as ...{md[Math.Max(0, other.Index - 40)..Math.Min(md.Length, other.Index + 20)]}...");
        foreach (string file in figures)
        {
            string svg = File.ReadAllText(Path.Combine(report.Directory, file));
            Assert.DoesNotMatch(NumberTextTests.OtherExponent(), string.Join(" ", Regex.Matches(svg, ">([^<]*)<").Select(m => m.Groups[1].Value)));
        }
        Assert.DoesNotMatch("<(img|link|script)[^>]+(src|href)=", html);
        Assert.DoesNotContain(".tmp", string.Join(",", System.IO.Directory.GetFiles(report.Directory)));
    }

    [Fact]
    public void Report_refuses_to_overwrite_without_force()
    {
        Assert.True(report.Code == 0, report.Errors);
        (int code, _, string err) = CliRun.Run("report", "--out", report.Directory, "--repo", Data.RepoRoot);
        Assert.Equal(2, code);
        Assert.Contains("--force", err);
    }

    [ChromiumFact]
    public void Headless_chromium_renders_every_figure()
    {
        Prerequisite.Require(ChromiumFactAttribute.Path is not null, "Chromium is not installed (Debian: apt-get install chromium)");
        Assert.True(report.Code == 0, report.Errors);
        string page = new Uri(Path.Combine(report.Directory, "report.html")).AbsoluteUri;
        string profile = Data.TempDir();
        string shot = Path.Combine(Data.TempDir(), "report.png");
        string[] common = ["--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile];

        (int code, string output) = Processes.Run(ChromiumFactAttribute.Path!, [.. common, "--window-size=1200,4000", "--screenshot=" + shot, page], report.Directory, TimeSpan.FromMinutes(2));
        Assert.True(code == 0 && File.Exists(shot), output);
        byte[] png = File.ReadAllBytes(shot);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        Assert.True(png.Length > 50_000, $"a {png.Length}-byte screenshot is too small to hold the report");

        // The page's load handler counts the figures whose SVG laid out with a non-empty box and drawn marks.
        // At a 1200 px window: every figure drew, spans the text column, has no text under 12 px and no two texts over each other.
        (code, output) = Processes.Run(ChromiumFactAttribute.Path!, [.. common, "--window-size=1200,4000", "--virtual-time-budget=5000", "--dump-dom", page], report.Directory, TimeSpan.FromMinutes(2));
        Assert.True(code == 0, output);
        Match body = Regex.Match(output, "<body data-figures=\"(?<n>\\d+)\" data-figures-rendered=\"(?<ok>\\d+)\" data-figures-narrow=\"(?<narrow>\\d+)\" data-min-text-px=\"(?<text>\\d+)\" data-text-overlaps=\"(?<overlaps>\\d+)\" data-first-overlap=\"(?<first>[^\"]*)\"");
        Assert.True(body.Success, "the load handler did not run: " + output[..Math.Min(500, output.Length)]);
        int Value(string name) => int.Parse(body.Groups[name].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Value("n") >= 10);
        Assert.Equal(Value("n"), Value("ok"));
        Assert.True(Value("narrow") == 0, $"{Value("narrow")} figures are narrower than the text column");
        Assert.True(Value("text") >= 12, $"the smallest text in a figure renders {Value("text")} px high");
        Assert.True(Value("overlaps") == 0, $"{Value("overlaps")} pairs of texts overlap in the figures, the first {System.Net.WebUtility.HtmlDecode(body.Groups["first"].Value)}");
    }
}

/// <summary>A fact that needs headless Chromium: skipped on a developer's machine without it, failing under CI=true.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        Skip = Prerequisite.SkipReason(Path is not null, "Chromium is not installed (Debian: apt-get install chromium)");
    }

    public static string? Path { get; } = Processes.Which("chromium", "chromium-browser", "google-chrome");
}
