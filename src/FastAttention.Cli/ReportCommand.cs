using System.Globalization;
using FastAttention.Lab.Reports;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn report --out DIR</c>: the lab's whole report (<see cref="LabReport"/>): every experiment and the
/// exact-kernel benchmark rerun, written as <c>report.html</c> (self-contained: plots inline, no network resources),
/// the same content as <c>report.md</c> with its SVG plots beside it, and each experiment's own page.
/// </summary>
internal static class ReportCommand
{
    public static Command Command { get; } = new(
        "report",
        "rerun every experiment and benchmark; write one report (report.html with inline plots, report.md) of each claim, its measurement and verdict",
        [
            new("out", "DIR", "folder for report.html, report.md and the plots (default: report; created if missing)"),
            new("full", null, "paper-scale sizes (tens of minutes on 2 cores) instead of the quick ones (a few minutes)"),
            new("peers", null, "also run the peer harness bench/peers/run.sh three times (ONNX Runtime, NumPy; installs its extras; needs bash, npm, python3-numpy)"),
            new("repo", "DIR", "the repository root, for data/ and bench/peers (default: the current folder)"),
            new("seed", "S", "random seed (default 1)"),
            new("threads", "T", "worker threads (default: all cores)"),
            new("force", null, "overwrite existing report files"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string dir = o.Get("out") ?? "report";
        bool force = o.Flag("force");
        var settings = new ReportSettings(o.Get("repo") ?? ".", o.Flag("full"), o.Int("seed", 0, int.MaxValue) ?? 1, o.Threads() ?? 0, o.Flag("peers"));
        if (!Directory.Exists(Path.Combine(settings.RepositoryRoot, "data")))
        {
            throw new UsageException($"report: --repo {settings.RepositoryRoot}: no data/ folder there (pass the repository root)");
        }

        string harness = Path.Combine(settings.RepositoryRoot, "bench", "peers", "run.sh");
        if (settings.RunPeers && !File.Exists(harness))
        {
            throw new UsageException($"report: --peers: {harness} not found (pass --repo with the repository root)");
        }

        ReportOutput report = LabOutput.InFolder("report", dir, () =>
        {
            foreach (string file in LabReport.MainFiles)
            {
                TensorFiles.CheckWritable("out", Path.Combine(dir, file), force);
            }

            return LabReport.Produce(settings, stdout, Progress.Current.ForLab());
        });
        LabOutput.Write(dir, report.Files, force);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {Path.Combine(dir, "report.html")}, {Path.Combine(dir, "report.md")} and {report.Files.Count(f => f.Key.EndsWith(".svg", StringComparison.Ordinal))} plots: {LabReport.Summary(report.Claims)}"));
        return ExitCode.Ok;
    }
}
