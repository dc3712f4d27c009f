using System.Globalization;
using FastAttention.Lab.Reports;

namespace FastAttention.Lab;

/// <summary>How an experiment runs.</summary>
/// <param name="Full">Paper-scale sizes instead of the quick ones.</param>
/// <param name="Seed">Random seed.</param>
/// <param name="Threads">Worker threads; 0: all cores.</param>
/// <param name="DataDirectory">The repository's data folder (levattention reads data/glove and data/ocr from it).</param>
public sealed record ExperimentSettings(bool Full = false, int Seed = 1, int Threads = 0, string DataDirectory = "data")
{
    /// <summary>The worker threads a run uses (<see cref="Threads"/>, or all cores).</summary>
    public int EffectiveThreads => Threads > 0 ? Threads : Environment.ProcessorCount;
}

/// <summary>An experiment's result: its page (markdown, plots referenced by file name), the plots, and the claims it checked.</summary>
public sealed class ExperimentReport
{
    internal ExperimentReport(string name, string markdown, Dictionary<string, SvgPlot> plots, IReadOnlyList<Claim> claims)
    {
        Name = name;
        Markdown = markdown;
        Claims = claims;
        Plots = plots.ToDictionary(p => p.Key, p => p.Value.Render());
    }

    /// <summary>The experiment's name.</summary>
    public string Name { get; }

    /// <summary>The page without its verdicts table.</summary>
    public string Markdown { get; }

    /// <summary>The claims checked, each with its measurement and verdict.</summary>
    public IReadOnlyList<Claim> Claims { get; }

    /// <summary>The plots as standalone SVG documents, by file name.</summary>
    public IReadOnlyDictionary<string, string> Plots { get; }

    /// <summary>The markdown followed by the verdicts table.</summary>
    public string WithVerdicts => Markdown + Environment.NewLine + "## Verdicts" + Environment.NewLine + Environment.NewLine + Claim.Table(Claims, withSource: true);

    /// <summary>Every file the experiment writes, by name: <c>NAME.md</c> and the plots.</summary>
    public IReadOnlyDictionary<string, string> Files => Plots.Append(new(Name + ".md", WithVerdicts)).ToDictionary(p => p.Key, p => p.Value);
}

/// <summary>
/// The papers' experiments, rerun on this machine: each returns its page, plots and claims with verdicts computed from
/// what it measured. Writing the files is the caller's business.
/// </summary>
public static partial class Experiments
{
    /// <summary>Every experiment's name.</summary>
    public static IReadOnlyList<string> Names { get; } = ["bounded-entries", "sketch", "crossover", "tensor", "levattention", "levattention-train", "match3"];

    /// <summary>Runs experiment <paramref name="name"/>.</summary>
    /// <param name="name">One of <see cref="Names"/>.</param>
    /// <param name="settings">Sizes, seed, threads, data folder.</param>
    /// <param name="log">Where the experiment's log lines go (each is also a progress step).</param>
    /// <param name="progress">Progress and cancellation.</param>
    /// <returns>The page, plots and claims.</returns>
    /// <exception cref="ArgumentException">Unknown experiment.</exception>
    /// <exception cref="OperationCanceledException">The run was cancelled.</exception>
    public static ExperimentReport Run(string name, ExperimentSettings settings, TextWriter log, LabProgress? progress = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(log);
        progress ??= LabProgress.None;
        var s = new Context(settings, progress.Log(log), progress);
        progress.Step("experiment " + name);
        return name switch
        {
            "bounded-entries" => BoundedEntries(s),
            "sketch" => Sketch(s),
            "crossover" => Crossover(s),
            "tensor" => Tensor(s),
            "levattention" => LevAttentionExperiment(s),
            "levattention-train" => LevTrainExperiment(s),
            "match3" => MatchExperiment(s),
            _ => throw new ArgumentException($"unknown experiment '{name}' (available: {string.Join(", ", Names)})", nameof(name)),
        };
    }

    /// <summary>Where each claim the experiments check comes from.</summary>
    internal static class Sources
    {
        public const string BoundedEntries = "Alman & Song, Fast Attention Requires Bounded Entries";
        public const string Tensor = "Alman & Song, How to Capture Higher-order Correlations? (tensor attention)";
        public const string Lev = "Kannan, Bhattacharyya, Kacham & Woodruff, LevAttention";
        public const string PolySketch = "PolySketchFormer (sketched polynomial attention)";
        public const string Library = "FastAttention's own goal";
        public const string Simplicial = "Roy et al. 2025, Fast and Simplex (windowed 2-simplicial attention)";
    }

    /// <summary>One run's settings, log and progress, as the experiment bodies read them.</summary>
    private sealed record Context(ExperimentSettings Settings, TextWriter Log, LabProgress Progress)
    {
        public bool Full => Settings.Full;

        public int Seed => Settings.Seed;

        public int Threads => Settings.Threads;

        /// <summary>"Machine: CPU, N cores, T thread(s). Date: ... UTC." for an experiment's page.</summary>
        public string MachineLine => string.Create(CultureInfo.InvariantCulture, $"Machine: {Machine.CpuModel}, {Environment.ProcessorCount} cores, {Settings.EffectiveThreads} thread(s). Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC.");

        /// <summary>The median time of <paramref name="repeat"/> runs, each a cancellation point.</summary>
        public double Median(Action run, int repeat) => TimedRuns.Median(TimedRuns.Repeat(run, repeat, Progress));
    }
}
