using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn experiment NAME</c>: reruns a paper's claim on this machine (<see cref="Experiments"/>, in the lab) and
/// writes its markdown page with SVG plots (the committed copies live in docs/experiments/).
/// </summary>
internal static class ExperimentCommand
{
    public static Command Command { get; } = new(
        "experiment",
        "rerun a paper's claim and write a markdown report with SVG plots: " + string.Join(", ", Experiments.Names),
        [
            new("name", "NAME", "the experiment (also accepted as a bare word): " + string.Join(", ", Experiments.Names)),
            new("out", "DIR", "folder for the report and plots (default docs/experiments; created if missing)"),
            new("full", null, "paper-scale sizes (n up to 2^16; minutes) instead of the quick ones"),
            new("seed", "S", "random seed (default 1)"),
            new("threads", "T", "worker threads (default: all cores)"),
            new("force", null, "overwrite existing report files"),
            new("data", "DIR", "levattention: the repository's data folder (default data)"),
        ],
        Run)
    {
        Positional = "name",
    };

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string name = o.Get("name") ?? throw new UsageException($"experiment: name one of {string.Join(", ", Experiments.Names)}");
        if (!Experiments.Names.Contains(name))
        {
            throw new UsageException($"experiment: unknown experiment '{name}' (available: {string.Join(", ", Experiments.Names)})");
        }

        string? data = o.Get("data");
        if (data is not null && name != "levattention")
        {
            throw new UsageException($"experiment: --data applies to levattention, not {name}");
        }

        if (data is not null && !Directory.Exists(data))
        {
            throw new UsageException($"experiment: --data {data}: no such folder");
        }

        string dir = o.Get("out") ?? Path.Combine("docs", "experiments");
        bool force = o.Flag("force");
        var settings = new ExperimentSettings(o.Flag("full"), o.Int("seed", 0, int.MaxValue) ?? 1, o.Threads() ?? 0, data ?? "data");

        // The output folder and the page's name are checked before minutes of computing, not after.
        ExperimentReport report = LabOutput.InFolder("experiment", dir, () =>
        {
            TensorFiles.CheckWritable("out", Path.Combine(dir, name + ".md"), force);
            return Experiments.Run(name, settings, stdout, Progress.Current.ForLab());
        });
        LabOutput.Write(dir, report.Files, force);
        stdout.WriteLine($"wrote {Path.Combine(dir, name + ".md")} and {report.Plots.Count} plot(s) in {dir}");
        return ExitCode.Ok;
    }
}

/// <summary>Where the lab's experiment and report commands put their files: a folder that exists only once there is something in it.</summary>
internal static class LabOutput
{
    /// <summary>
    /// Creates <paramref name="dir"/> (a usage error at once if it cannot be) and runs <paramref name="produce"/>; if that
    /// fails or is cancelled, a folder created here and still empty is removed again.
    /// </summary>
    public static T InFolder<T>(string command, string dir, Func<T> produce)
    {
        // The folders this call creates: dir and any missing parents, innermost first.
        var created = new List<string>();
        for (string? d = Path.GetFullPath(dir); d is not null && !Directory.Exists(d); d = Path.GetDirectoryName(d))
        {
            created.Add(d);
        }

        TensorFiles.CreateFolder(command, dir);

        // Also removed if the process must leave after Ctrl-C while a long library call is running.
        TensorFiles.TrackCreatedFolders(created);
        try
        {
            return produce();
        }
        catch when (created.Count > 0)
        {
            foreach (string d in created.TakeWhile(d => Directory.Exists(d) && !Directory.EnumerateFileSystemEntries(d).Any()))
            {
                Directory.Delete(d);
            }

            throw;
        }
        finally
        {
            TensorFiles.UntrackCreatedFolders(created);
        }
    }

    /// <summary>Writes <paramref name="files"/> into <paramref name="dir"/>, each atomically, after checking that none would be overwritten without <paramref name="force"/>.</summary>
    public static void Write(string dir, IReadOnlyDictionary<string, string> files, bool force)
    {
        foreach (string file in files.Keys)
        {
            TensorFiles.CheckWritable("out", Path.Combine(dir, file), force);
        }

        foreach ((string file, string content) in files)
        {
            TensorFiles.WriteAtomically(Path.Combine(dir, file), force, temp => File.WriteAllText(temp, content));
        }
    }
}
