using System.Globalization;
using System.Text;
using System.Text.Json;
using FastAttention.Cli.Reports;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn report --out DIR</c>: reruns every experiment and the exact-kernel benchmark and writes one
/// report of every claim, measurement, plot and verdict: <c>report.html</c> (self-contained: plots inline,
/// no network resources), the same content as <c>report.md</c> with its SVG plots beside it, and each
/// experiment's own page (<c>NAME.md</c>, as <c>fastattn experiment</c> writes it).
/// </summary>
internal static class ReportCommand
{
    /// <summary>The papers, in order, and the experiments that check each.</summary>
    private static readonly (string Title, string[] Experiments)[] Papers =
    [
        ("1. Fast Attention Requires Bounded Entries (Alman & Song)", ["bounded-entries", "crossover", "sketch"]),
        ("2. Higher-order (tensor) attention (Alman & Song)", ["tensor"]),
        ("3. LevAttention: universal sets from leverage scores (Kannan, Bhattacharyya, Kacham & Woodruff)", ["levattention"]),
    ];

    private const int BenchN = 4096, BenchD = 64;

    private static readonly string BenchmarksHeading = string.Create(CultureInfo.InvariantCulture, $"Benchmarks: exact attention, n = {BenchN}, d = {BenchD}, one head, fp32");

    /// <summary>Runs of the peer harness with --peers (the verdict uses each thread count's median ratio).</summary>
    private const int PeerRuns = 3;

    public static Command Command { get; } = new(
        "report",
        "rerun every experiment and benchmark; write one report (report.html with inline plots, report.md) of each claim, its measurement and verdict",
        [
            new("out", "DIR", "folder for report.html, report.md and the plots (default: report; created if missing)"),
            new("full", null, "paper-scale sizes (tens of minutes on 2 cores) instead of the quick ones (a few minutes)"),
            new("peers", null, "also run the peer harness bench/peers/run.sh three times (ONNX Runtime, NumPy; installs its extras; needs bash, npm, python3-numpy)"),
            new("repo", "DIR", "the repository root, for data/, docs/ and bench/peers (default: the current folder)"),
            new("shared", "DIR", "the project's shared data, used when present (default ../shared/data under --repo)"),
            new("seed", "S", "random seed (default 1)"),
            new("threads", "T", "worker threads (default: all cores)"),
            new("force", null, "overwrite existing report files"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string dir = o.Get("out") ?? "report";
        string repo = o.Get("repo") ?? ".";
        bool force = o.Flag("force"), full = o.Flag("full");
        int threads = o.Int("threads", 1, 1024) ?? 0;
        int seed = o.Int("seed", 0, int.MaxValue) ?? 1;
        TensorFiles.CreateFolder("report", dir);

        string html = Path.Combine(dir, "report.html"), markdown = Path.Combine(dir, "report.md");
        TensorFiles.CheckWritable("out", html, force);
        TensorFiles.CheckWritable("out", markdown, force);

        Progress progress = Progress.Current;
        string[] names = [.. Papers.SelectMany(p => p.Experiments)];
        int steps = names.Length + 1;
        var settings = new ExperimentCommand.Settings(full, seed, threads, new ProgressLog(stdout));
        var reports = new Dictionary<string, ExperimentCommand.Report>();
        for (int i = 0; i < names.Length; i++)
        {
            progress.Step("experiment " + names[i], (double)i / steps);
            stdout.WriteLine($"== experiment {names[i]} ==");
            reports[names[i]] = ExperimentCommand.Produce(names[i], settings, Path.Combine(repo, "data"), o.Get("shared") ?? Path.Combine(repo, "..", "shared", "data"));
        }

        progress.Step("benchmarks", (double)names.Length / steps);
        stdout.WriteLine("== benchmarks ==");
        (string benchMarkdown, Claim benchClaim) = Benchmarks(repo, threads, o.Flag("peers"), stdout);

        // One document: summary of verdicts, benchmarks, then each paper's experiments (headings demoted under it).
        List<Claim> claims = [.. names.SelectMany(n => reports[n].Claims), benchClaim];
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("# FastAttention: every claim, measured on this machine");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Machine: {CpuModel()}, {Environment.ProcessorCount} cores, .NET {Environment.Version}, {(threads > 0 ? threads : Environment.ProcessorCount)} worker thread(s). Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC. Sizes: {(full ? "paper scale (--full)" : "quick")}; seed {seed}. Rerun: `fastattn report --out DIR{(full ? " --full" : string.Empty)}{(o.Flag("peers") ? " --peers" : string.Empty)}`."));
        md.AppendLine();
        md.AppendLine("Each verdict is computed from the measurement by the code that made it: **holds** when the measurement agrees with the claim, **partly** when it agrees for some settings or sizes only, **does not hold** when it contradicts it, **not measured** when the data or tools were missing. Quick sizes are far below the papers' asymptotic regimes; `--full` runs the paper-scale sizes.");
        md.AppendLine();
        md.AppendLine("Contents: [Summary](#summary) · [Benchmarks](#" + MarkdownHtml.Slug(BenchmarksHeading) + ") · "
            + string.Join(" · ", Papers.Select(p => $"[{p.Title}](#{MarkdownHtml.Slug(p.Title)})")));
        md.AppendLine();
        md.AppendLine("## Summary");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"{claims.Count(c => c.Verdict == Verdict.Holds)} of {claims.Count} claims hold, {claims.Count(c => c.Verdict == Verdict.Partly)} partly, {claims.Count(c => c.Verdict == Verdict.DoesNotHold)} do not hold, {claims.Count(c => c.Verdict == Verdict.NotMeasured)} not measured."));
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
        Dictionary<string, SvgPlot> plots = reports.Values.SelectMany(r => r.Plots).ToDictionary(p => p.Key, p => p.Value);
        Dictionary<string, string> rendered = plots.ToDictionary(p => p.Key, p => p.Value.Render());
        foreach (string file in plots.Keys.Concat(names.Select(n => n + ".md")).Select(p => Path.Combine(dir, p)))
        {
            TensorFiles.CheckWritable("out", file, force);
        }

        foreach ((string file, string svg) in rendered)
        {
            TensorFiles.WriteAtomically(Path.Combine(dir, file), force, temp => File.WriteAllText(temp, svg));
        }

        // Each experiment's own page too, as `fastattn experiment NAME` writes it (same plots, same folder).
        foreach (string name in names)
        {
            TensorFiles.WriteAtomically(Path.Combine(dir, name + ".md"), force, temp => File.WriteAllText(temp, reports[name].WithVerdicts));
        }

        TensorFiles.WriteAtomically(markdown, force, temp => File.WriteAllText(temp, text));
        string page = MarkdownHtml.Page("FastAttention report", text, name => rendered.GetValueOrDefault(name));
        TensorFiles.WriteAtomically(html, force, temp => File.WriteAllText(temp, page));
        stdout.WriteLine(string.Create(inv, $"wrote {html}, {markdown} and {rendered.Count} plots: {claims.Count(c => c.Verdict == Verdict.Holds)} of {claims.Count} claims hold"));
        return ExitCode.Ok;
    }

    /// <summary>The exact kernel measured now (1 thread and all), and the peer harness's results when run or available.</summary>
    private static (string Markdown, Claim Claim) Benchmarks(string repo, int threads, bool runPeers, TextWriter stdout)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("## " + BenchmarksHeading);
        md.AppendLine();
        md.AppendLine("### FastAttention's exact kernel, this run");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"`fastattn bench --n {BenchN} --d {BenchD} --threads T --repeat 10` on seeded random inputs (warm-up, then the median of 10 runs); flops counted as 4 n^2 d; the FMA peak is measured in the same run."));
        md.AppendLine();
        md.AppendLine("| threads | kernel | median ms | GFLOP/s | % of the measured FMA peak |");
        md.AppendLine("|---|---|---|---|---|");
        int all = threads > 0 ? threads : Environment.ProcessorCount;
        foreach (int t in all > 1 ? new[] { 1, all } : [1])
        {
            var output = new StringWriter();
            var errors = new StringWriter();
            int code = Cli.Run(["bench", "--n", BenchN.ToString(inv), "--d", BenchD.ToString(inv), "--threads", t.ToString(inv), "--repeat", "10", "--json"], output, errors, null, Progress.Current.Cancellation);
            Progress.Current.ThrowIfCancelled();
            if (code != ExitCode.Ok)
            {
                throw new InvalidOperationException("report: the exact-kernel benchmark failed: " + errors.ToString().Trim());
            }

            using JsonDocument json = JsonDocument.Parse(output.ToString());
            JsonElement r = json.RootElement;
            string row = string.Create(inv, $"| {t} | {r.GetProperty("kernel").GetString()} | {r.GetProperty("medianSeconds").GetDouble() * 1e3:F2} | {r.GetProperty("gflops").GetDouble():F1} | {r.GetProperty("percentOfPeak").GetDouble():F0}% |");
            md.AppendLine(row);
            stdout.WriteLine(string.Create(inv, $"exact kernel, {t} thread(s): {r.GetProperty("gflops").GetDouble():F1} GFLOP/s"));
        }

        md.AppendLine();
        md.AppendLine("### Against ONNX Runtime and NumPy (peer harness)");
        md.AppendLine();
        string harness = Path.Combine(repo, "bench", "peers", "run.sh");
        string results = Path.Combine(repo, "bench", "peers", "work", string.Create(inv, $"n{BenchN}_d{BenchD}_h1"), "results.jsonl");
        string statement = string.Create(inv, $"The exact kernel is faster than ONNX Runtime's fused MultiHeadAttention on the same CPU (n = {BenchN}, d = {BenchD}, same run, every thread count).");

        // On a shared machine one comparison can be off by a third either way (a neighbour takes the core while
        // one implementation is timed), so --peers runs the harness several times and judges by the median ratio.
        var runs = new List<List<PeerRow>>();
        if (runPeers)
        {
            if (!File.Exists(harness))
            {
                throw new UsageException($"report: --peers: {harness} not found (pass --repo with the repository root)");
            }

            for (int run = 0; run < PeerRuns; run++)
            {
                Progress.Current.Step(string.Create(inv, $"peer harness (ONNX Runtime, NumPy): run {run + 1} of {PeerRuns}"));
                (int code, string log) = RunHarness(harness, repo);
                stdout.Write(log);
                if (code != 0 || !File.Exists(results))
                {
                    md.AppendLine($"The peer harness failed (exit {code}); its last lines: `{log.Trim().Split('\n')[^1].Trim()}`.");
                    return (md.ToString(), new Claim(ExperimentCommand.Sources.Library, statement, "peer harness failed", Verdict.NotMeasured));
                }

                runs.Add(ReadPeerResults(results));
            }
        }
        else if (File.Exists(results))
        {
            runs.Add(ReadPeerResults(results));
        }
        else
        {
            md.AppendLine("Not run: `fastattn report --peers` runs `bench/peers/run.sh` (it installs onnxruntime-node from npm and python3-numpy from Debian), or run the harness yourself; the committed comparisons are in `docs/benchmarks.md`.");
            return (md.ToString(), new Claim(ExperimentCommand.Sources.Library, statement, "peer harness not run (use --peers)", Verdict.NotMeasured));
        }

        DateTime when = File.GetLastWriteTimeUtc(results);
        md.AppendLine(string.Create(inv, $"{(runPeers ? $"{PeerRuns} runs of the peer harness just now" : "The peer harness's last run")} (last at {when:yyyy-MM-dd HH:mm} UTC, `{Path.GetRelativePath(repo, results)}`): identical inputs, every output checked against a float64 reference; ratio = ONNX Runtime's median time over the implementation's, in the same run.{(runPeers ? string.Empty : " Rerun with `--peers` to measure them now.")} The table is the last run:"));
        md.AppendLine();
        md.AppendLine("| implementation | threads | median ms | GFLOP/s | speed vs ONNX Runtime | max rel. error |");
        md.AppendLine("|---|---|---|---|---|---|");
        double flops = FlopCount.ExactAttention(1, 1, BenchN, BenchN, BenchD, BenchD, causal: false);
        foreach (PeerRow r in runs[^1])
        {
            double? ratio = Ratio(runs[^1], r);
            md.AppendLine(string.Create(inv, $"| {r.Impl} | {r.Threads} | {r.Seconds * 1e3:F2} | {flops / r.Seconds / 1e9:F1} | {(ratio is double x ? $"{x:F2}x" : "-")} | {r.Error:E1} |"));
        }

        // FastAttention's ratio per thread count, run by run; the verdict goes by each thread count's median.
        var perThreads = runs.SelectMany(run => run.Where(r => r.Impl.StartsWith("FastAttention", StringComparison.Ordinal))
                .Select(r => (r.Threads, Ratio: Ratio(run, r))))
            .Where(x => x.Ratio is not null)
            .GroupBy(x => x.Threads)
            .Select(g => (Threads: g.Key, Ratios: g.Select(x => x.Ratio!.Value).ToList()))
            .ToList();
        string Summary((int Threads, List<double> Ratios) x) => runs.Count == 1
            ? string.Create(inv, $"{x.Threads} thread(s): {x.Ratios[0]:F2}x ONNX Runtime's speed (one run)")
            : string.Create(inv, $"{x.Threads} thread(s): median {Median(x.Ratios):F2}x ONNX Runtime's speed (runs: {string.Join(", ", x.Ratios.Select(r => r.ToString("F2", inv)))})");
        md.AppendLine();
        md.AppendLine("FastAttention against ONNX Runtime: " + string.Join("; ", perThreads.Select(Summary)) + ".");
        var claim = new Claim(ExperimentCommand.Sources.Library, statement,
            perThreads.Count == 0 ? "no FastAttention/ONNX Runtime pair in the results" : string.Join("; ", perThreads.Select(Summary)) + string.Create(inv, $" ({when:yyyy-MM-dd HH:mm} UTC)."),
            perThreads.Count == 0 ? Verdict.NotMeasured : Claim.Of([.. perThreads.Select(x => Median(x.Ratios) > 1)]));
        return (md.ToString(), claim);
    }

    /// <summary>One implementation's line of a peer-harness run.</summary>
    private sealed record PeerRow(string Impl, int Threads, double Seconds, double Error);

    private static List<PeerRow> ReadPeerResults(string results)
    {
        var rows = new List<PeerRow>();
        foreach (string line in File.ReadLines(results).Where(l => l.Trim().Length > 0))
        {
            using JsonDocument json = JsonDocument.Parse(line);
            JsonElement r = json.RootElement;
            rows.Add(new(r.GetProperty("impl").GetString() ?? "?", r.GetProperty("threads").GetInt32(), r.GetProperty("medianSeconds").GetDouble(), r.GetProperty("maxRelativeError").GetDouble()));
        }

        return rows;
    }

    /// <summary>ONNX Runtime's time over <paramref name="row"/>'s, at the same thread count in the same run.</summary>
    private static double? Ratio(List<PeerRow> run, PeerRow row) =>
        run.FirstOrDefault(x => x.Impl == "onnxruntime" && x.Threads == row.Threads) is { } ort ? ort.Seconds / row.Seconds : null;

    private static double Median(List<double> values) => Timing.Median([.. values.Order()]);

    private static (int Code, string Output) RunHarness(string harness, string repo)
    {
        var info = new System.Diagnostics.ProcessStartInfo("bash") { WorkingDirectory = repo, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { harness, "--n", BenchN.ToString(CultureInfo.InvariantCulture), "--d", BenchD.ToString(CultureInfo.InvariantCulture), "--repeat", "10" })
        {
            info.ArgumentList.Add(arg);
        }

        using System.Diagnostics.Process process = System.Diagnostics.Process.Start(info) ?? throw new InvalidOperationException("report: cannot start bash for the peer harness");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> errors = process.StandardError.ReadToEndAsync();
        while (!process.WaitForExit(200))
        {
            if (Progress.Current.Cancellation.IsCancellationRequested)
            {
                process.Kill(entireProcessTree: true);
                Progress.Current.ThrowIfCancelled();
            }
        }

        return (process.ExitCode, output.GetAwaiter().GetResult() + errors.GetAwaiter().GetResult());
    }

    /// <summary>Adds <paramref name="levels"/> '#' to every heading (experiment reports become subsections).</summary>
    private static string Demote(string markdown, int levels)
    {
        string prefix = new('#', levels);
        return string.Join(Environment.NewLine, markdown.ReplaceLineEndings("\n").Split('\n').Select(l => l.StartsWith('#') ? prefix + l : l)) + Environment.NewLine;
    }

    private static string CpuModel()
    {
        try
        {
            string? line = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal)) : null;
            return line is null ? System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString() : line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
        }
        catch (IOException)
        {
            return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
        }
    }
}
