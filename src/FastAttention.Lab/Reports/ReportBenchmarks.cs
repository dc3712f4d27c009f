using System.Globalization;
using System.Text;

namespace FastAttention.Lab.Reports;

/// <summary>
/// The report's benchmark section: the exact kernel measured now through <see cref="Benchmark.Run"/> (1 thread and
/// all), and the peer harness's comparison, run now with <see cref="ReportSettings.RunPeers"/> or read from its last
/// run (dated, and never judged as this run's measurement).
/// </summary>
internal static class ReportBenchmarks
{
    private const int BenchN = 4096, BenchD = 64, Repeats = 10;

    /// <summary>Runs of the peer harness with peers on (the verdict uses each thread count's median ratio).</summary>
    private const int PeerRuns = 3;

    public static readonly string Heading = string.Create(CultureInfo.InvariantCulture, $"Benchmarks: exact attention, n = {BenchN}, d = {BenchD}, one head, fp32");

    private static readonly string Statement = string.Create(CultureInfo.InvariantCulture, $"The exact kernel is faster than ONNX Runtime's fused MultiHeadAttention on the same CPU (n = {BenchN}, d = {BenchD}, same run, every thread count).");

    public static (string Markdown, Claim Claim) Section(ReportSettings settings, TextWriter log, LabProgress progress)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("## " + Heading);
        md.AppendLine();
        md.AppendLine("### FastAttention's exact kernel, this run");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"`fastattn bench --n {BenchN} --d {BenchD} --threads T --repeat {Repeats}` on seeded random inputs (warm-up, then the median of {Repeats} runs); flops counted as 4 n^2 d; the FMA peak is measured in the same run."));
        md.AppendLine();
        int all = settings.Threads > 0 ? settings.Threads : Environment.ProcessorCount;
        var rows = new List<BenchmarkResult>();
        foreach (int t in all > 1 ? new[] { 1, all } : [1])
        {
            rows.Add(Benchmark.Run(new BenchmarkRequest("exact", AttentionShape.SingleHead(BenchN, BenchD)) { Settings = new MethodSettings { Threads = t }, Repeats = Repeats }, progress));
            log.WriteLine(string.Create(inv, $"exact kernel, {t} thread(s): {rows[^1].Gflops:F1} GFLOP/s"));
        }

        md.Append(Table(rows));
        md.AppendLine();
        md.AppendLine("### Against ONNX Runtime and NumPy (peer harness)");
        md.AppendLine();
        (string peers, Claim claim) = Peers(settings, log, progress);
        md.Append(peers);
        return (md.ToString(), claim);
    }

    /// <summary>A benchmark table, headed by the CPU and time each row was measured on.</summary>
    /// <param name="rows">The measurements.</param>
    /// <returns>The markdown: a "Measured on" line and the table.</returns>
    public static string Table(IReadOnlyList<BenchmarkResult> rows)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        foreach (string cpu in rows.Select(r => r.Machine.CpuModel).Distinct())
        {
            IEnumerable<DateTime> times = rows.Where(r => r.Machine.CpuModel == cpu).Select(r => r.Machine.UtcTime);
            md.AppendLine(string.Create(inv, $"Measured on {cpu} ({rows[0].Machine.Cores} cores), {times.Min():yyyy-MM-dd HH:mm} UTC."));
        }

        md.AppendLine();
        md.AppendLine("| threads | kernel | median ms | GFLOP/s | % of the measured FMA peak |");
        md.AppendLine("|---|---|---|---|---|");
        foreach (BenchmarkResult r in rows)
        {
            md.AppendLine(string.Create(inv, $"| {r.Threads} | {r.Kernel} | {r.MedianSeconds * 1e3:F2} | {r.Gflops:F1} | {r.PercentOfPeak:F0}% |"));
        }

        return md.ToString();
    }

    private static (string Markdown, Claim Claim) Peers(ReportSettings settings, TextWriter log, LabProgress progress)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        string repo = settings.RepositoryRoot;
        string harness = Path.Combine(repo, "bench", "peers", "run.sh");
        string results = Path.Combine(repo, "bench", "peers", "work", string.Create(inv, $"n{BenchN}_d{BenchD}_h1"), "results.jsonl");

        // On a shared machine one comparison can be off by a third either way (a neighbour takes the core while
        // one implementation is timed), so peers run several times and the verdict goes by the median ratio.
        var runs = new List<List<PeerHarness.Row>>();
        string? cpu = null;
        if (settings.RunPeers)
        {
            if (!File.Exists(harness))
            {
                throw new FileNotFoundException($"the peer harness {harness} is not there (the repository root is {repo})", harness);
            }

            for (int run = 0; run < PeerRuns; run++)
            {
                progress.Step(string.Create(inv, $"peer harness (ONNX Runtime, NumPy): run {run + 1} of {PeerRuns}"));
                (int code, string output) = PeerHarness.Run(harness, repo, ["--n", BenchN.ToString(inv), "--d", BenchD.ToString(inv), "--repeat", "10"], progress);
                log.Write(output);
                if (code != 0 || !File.Exists(results))
                {
                    md.AppendLine($"The peer harness failed (exit {code}); its last lines: `{output.Trim().Split('\n')[^1].Trim()}`.");
                    return (md.ToString(), new Claim(Experiments.Sources.Library, Statement, "peer harness failed", Verdict.NotMeasured));
                }

                cpu = PeerHarness.CpuLine(output) ?? cpu;
                runs.Add(PeerHarness.Read(results));
            }
        }
        else if (File.Exists(results))
        {
            runs.Add(PeerHarness.Read(results));
        }
        else
        {
            md.AppendLine("Not run: `fastattn report --peers` runs `bench/peers/run.sh` (it installs onnxruntime-node from npm and python3-numpy from Debian), or run the harness yourself; the committed comparisons are in `docs/benchmarks.md`.");
            return (md.ToString(), new Claim(Experiments.Sources.Library, Statement, "peer harness not run (use --peers)", Verdict.NotMeasured));
        }

        DateTime when = File.GetLastWriteTimeUtc(results);
        string where = cpu is null ? "CPU not recorded in its results" : "on " + cpu;
        md.AppendLine(settings.RunPeers
            ? string.Create(inv, $"{PeerRuns} runs of the peer harness in this run ({where}; last at {when:yyyy-MM-dd HH:mm} UTC): identical inputs, every output checked against a float64 reference; ratio = ONNX Runtime's median time over the implementation's, in the same run. The table is the last run:")
            : string.Create(inv, $"**Not measured in this run**: these are a previous run of the peer harness (`{Path.GetRelativePath(repo, results)}`, written {when:yyyy-MM-dd HH:mm} UTC, {where}, so possibly another machine). Rerun with `--peers` to measure them now. Identical inputs, every output checked against a float64 reference; ratio = ONNX Runtime's median time over the implementation's, in that run:"));
        md.AppendLine();
        md.AppendLine("| implementation | threads | median ms | GFLOP/s | speed vs ONNX Runtime | max rel. error |");
        md.AppendLine("|---|---|---|---|---|---|");
        double flops = FlopCount.ExactAttention(1, 1, BenchN, BenchN, BenchD, BenchD, causal: false);
        foreach (PeerHarness.Row r in runs[^1])
        {
            double? ratio = PeerHarness.Ratio(runs[^1], r);
            md.AppendLine(string.Create(inv, $"| {r.Impl} | {r.Threads} | {r.Seconds * 1e3:F2} | {flops / r.Seconds / 1e9:F1} | {(ratio is double x ? $"{x:F2}x" : "-")} | {NumberText.Format(r.Error, 2)} |"));
        }

        // FastAttention's ratio per thread count, run by run; the verdict goes by each thread count's median.
        var perThreads = runs.SelectMany(run => run.Where(r => r.Impl.StartsWith("FastAttention", StringComparison.Ordinal))
                .Select(r => (r.Threads, Ratio: PeerHarness.Ratio(run, r))))
            .Where(x => x.Ratio is not null)
            .GroupBy(x => x.Threads)
            .Select(g => (Threads: g.Key, Ratios: g.Select(x => x.Ratio!.Value).Order().ToList()))
            .ToList();
        string Summary((int Threads, List<double> Ratios) x) => runs.Count == 1
            ? string.Create(inv, $"{x.Threads} thread(s): {x.Ratios[0]:F2}x ONNX Runtime's speed (one run)")
            : string.Create(inv, $"{x.Threads} thread(s): median {TimedRuns.Median(x.Ratios):F2}x ONNX Runtime's speed (runs: {string.Join(", ", x.Ratios.Select(r => r.ToString("F2", inv)))})");
        md.AppendLine();
        md.AppendLine("FastAttention against ONNX Runtime: " + string.Join("; ", perThreads.Select(Summary)) + ".");
        string measured = perThreads.Count == 0 ? "no FastAttention/ONNX Runtime pair in the results" : string.Join("; ", perThreads.Select(Summary)) + string.Create(inv, $" ({when:yyyy-MM-dd HH:mm} UTC, {where}).");
        var claim = settings.RunPeers
            ? new Claim(Experiments.Sources.Library, Statement, measured, perThreads.Count == 0 ? Verdict.NotMeasured : Claim.Of([.. perThreads.Select(x => TimedRuns.Median(x.Ratios) > 1)]))
            : new Claim(Experiments.Sources.Library, Statement, "not measured in this run (use --peers); a previous harness run gave: " + measured, Verdict.NotMeasured);
        return (md.ToString(), claim);
    }
}
