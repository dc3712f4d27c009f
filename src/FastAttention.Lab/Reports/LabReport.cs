using System.Globalization;
using System.Text;

namespace FastAttention.Lab.Reports;

/// <summary>How the report runs.</summary>
/// <param name="RepositoryRoot">The repository root: data/ for the experiments, bench/peers for the peer harness.</param>
/// <param name="Full">Paper-scale sizes instead of the quick ones.</param>
/// <param name="Seed">Random seed.</param>
/// <param name="Threads">Worker threads; 0: all cores.</param>
/// <param name="RunPeers">Also run the peer harness (bench/peers/run.sh) several times.</param>
public sealed record ReportSettings(string RepositoryRoot = ".", bool Full = false, int Seed = 1, int Threads = 0, bool RunPeers = false);

/// <summary>The report's content: every file it writes, by name, and the claims it judged.</summary>
/// <param name="Files">report.md, report.html, every plot and every experiment's own page, by file name.</param>
/// <param name="Claims">Every claim, in the summary's order.</param>
public sealed record ReportOutput(IReadOnlyDictionary<string, string> Files, IReadOnlyList<Claim> Claims)
{
    /// <summary>How many claims got <paramref name="verdict"/>.</summary>
    /// <param name="verdict">The verdict.</param>
    /// <returns>The count.</returns>
    public int Count(Verdict verdict) => Claims.Count(c => c.Verdict == verdict);
}

/// <summary>
/// The whole report: reruns every experiment and the exact-kernel benchmark and assembles one document of every claim,
/// measurement, plot and verdict (<c>report.md</c>, and <c>report.html</c> with the plots inline), plus each experiment's
/// own page. Nothing is written: the caller writes <see cref="ReportOutput.Files"/>.
/// </summary>
public static class LabReport
{
    /// <summary>The papers, in order, and the experiments that check each.</summary>
    private static readonly (string Title, string[] Experiments)[] Papers =
    [
        ("1. Fast Attention Requires Bounded Entries (Alman & Song)", ["bounded-entries", "crossover", "sketch"]),
        ("2. Higher-order (tensor) attention (Alman & Song)", ["tensor"]),
        ("3. LevAttention: universal sets from leverage scores (Kannan, Bhattacharyya, Kacham & Woodruff)", ["levattention", "levattention-train"]),
    ];

    /// <summary>The files every report writes whatever the experiments plot.</summary>
    public static IReadOnlyList<string> MainFiles { get; } = ["report.html", "report.md"];

    /// <summary>Runs everything and assembles the report.</summary>
    /// <param name="settings">Sizes, seed, threads, repository root, peers.</param>
    /// <param name="log">Where progress lines go (each is also a progress step).</param>
    /// <param name="progress">Progress and cancellation.</param>
    /// <returns>The files and claims.</returns>
    /// <exception cref="OperationCanceledException">The run was cancelled.</exception>
    /// <exception cref="FileNotFoundException">Peers requested and the harness is missing.</exception>
    public static ReportOutput Produce(ReportSettings settings, TextWriter log, LabProgress? progress = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(log);
        progress ??= LabProgress.None;
        MachineStamp started = MachineStamp.Now();
        string[] names = [.. Papers.SelectMany(p => p.Experiments)];
        int steps = names.Length + 1;
        var experimentSettings = new ExperimentSettings(settings.Full, settings.Seed, settings.Threads, Path.Combine(settings.RepositoryRoot, "data"));
        var reports = new Dictionary<string, ExperimentReport>();
        for (int i = 0; i < names.Length; i++)
        {
            progress.Step("experiment " + names[i], (double)i / steps);
            log.WriteLine($"== experiment {names[i]} ==");
            reports[names[i]] = Experiments.Run(names[i], experimentSettings, log, progress);
        }

        progress.Step("benchmarks", (double)names.Length / steps);
        log.WriteLine("== benchmarks ==");
        (string benchMarkdown, Claim benchClaim) = ReportBenchmarks.Section(settings, log, progress);

        // One document: summary of verdicts, benchmarks, then each paper's experiments (headings demoted under it).
        List<Claim> claims = [.. names.SelectMany(n => reports[n].Claims), benchClaim];
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("# FastAttention: every claim and what this run measured of it");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Machine: {started.CpuModel}, {started.Cores} cores, .NET {Environment.Version}, {(settings.Threads > 0 ? settings.Threads : Environment.ProcessorCount)} worker thread(s). Run: {started.UtcTime:yyyy-MM-dd HH:mm} to {DateTime.UtcNow:HH:mm} UTC. Sizes: {(settings.Full ? "paper scale (--full)" : "quick")}; seed {settings.Seed}. Rerun: `fastattn report --out DIR{(settings.Full ? " --full" : string.Empty)}{(settings.RunPeers ? " --peers" : string.Empty)}`."));
        md.AppendLine();
        md.AppendLine("Each verdict is computed from the measurement by the code that made it: **holds** when the measurement agrees with the claim, **partly** when it agrees for some settings or sizes only, **does not hold** when it contradicts it, **not measured** when nothing in this run measured it (data or tools missing, or every setting was uninformative, such as a set that kept every key). Quick sizes are far below the papers' asymptotic regimes; `--full` runs the paper-scale sizes.");
        md.AppendLine();
        md.AppendLine("Contents: [Summary](#summary) · [Benchmarks](#" + MarkdownHtml.Slug(ReportBenchmarks.Heading) + ") · "
            + string.Join(" · ", Papers.Select(p => $"[{p.Title}](#{MarkdownHtml.Slug(p.Title)})")));
        md.AppendLine();
        md.AppendLine("## Summary");
        md.AppendLine();
        md.AppendLine(Summary(claims));
        md.AppendLine();
        md.Append(Claim.Table(claims, withSource: true));
        md.AppendLine();
        md.Append(benchMarkdown);
        foreach ((string title, string[] experiments) in Papers)
        {
            md.AppendLine();
            md.AppendLine("## " + title);
            foreach (string name in experiments)
            {
                md.AppendLine();
                md.Append(Demote(reports[name].WithVerdicts, 2));
            }
        }

        string text = md.ToString();
        var files = new Dictionary<string, string>();
        foreach (ExperimentReport report in reports.Values)
        {
            foreach ((string file, string content) in report.Files)
            {
                files[file] = content;
            }
        }

        IReadOnlyDictionary<string, string> plots = reports.Values.SelectMany(r => r.Plots).ToDictionary(p => p.Key, p => p.Value);
        files["report.md"] = text;
        files["report.html"] = MarkdownHtml.Page("FastAttention report", text, name => plots.GetValueOrDefault(name));
        return new ReportOutput(files, claims);
    }

    /// <summary>"h of n claims hold, p partly, x do not hold, m not measured."</summary>
    /// <param name="claims">The claims.</param>
    /// <returns>The sentence, computed from the verdicts.</returns>
    public static string Summary(IReadOnlyCollection<Claim> claims)
    {
        ArgumentNullException.ThrowIfNull(claims);
        int Count(Verdict v) => claims.Count(c => c.Verdict == v);
        return string.Create(CultureInfo.InvariantCulture,
            $"{Count(Verdict.Holds)} of {claims.Count} claims hold, {Count(Verdict.Partly)} partly, {Count(Verdict.DoesNotHold)} do not hold, {Count(Verdict.NotMeasured)} not measured.");
    }

    /// <summary>Adds <paramref name="levels"/> '#' to every heading (experiment reports become subsections).</summary>
    private static string Demote(string markdown, int levels)
    {
        string prefix = new('#', levels);
        return string.Join(Environment.NewLine, markdown.ReplaceLineEndings("\n").Split('\n').Select(l => l.StartsWith('#') ? prefix + l : l)) + Environment.NewLine;
    }
}
