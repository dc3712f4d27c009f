using System.Diagnostics;

namespace FastAttention.Distributed.Tests.Support;

/// <summary>What an MPI job printed, and how it ended.</summary>
/// <param name="ExitCode">mpiexec's exit code (-1 when it was killed at the deadline).</param>
/// <param name="Output">Standard output of every rank, interleaved.</param>
/// <param name="Error">Standard error of every rank and of mpiexec.</param>
/// <param name="Elapsed">Wall time.</param>
internal sealed record MpiResult(int ExitCode, string Output, string Error, TimeSpan Elapsed)
{
    /// <summary>The lines that start with "rank ".</summary>
    public string[] RankLines => Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(l => l.StartsWith("rank ", StringComparison.Ordinal)).ToArray();

    /// <summary>Everything, for assertion messages.</summary>
    public override string ToString() => $"exit {ExitCode} after {Elapsed.TotalSeconds:0.0} s\n--- stdout\n{Output}\n--- stderr\n{Error}";
}

/// <summary>
/// Starts programs under MPICH's <c>mpiexec</c> on this machine's loopback: the test worker
/// (FastAttention.Distributed.Worker, built beside the tests) or any command. MPICH is a test requirement
/// (.ci/run installs it); a machine without it fails these tests with the install command in the message.
/// </summary>
internal static class MpiJob
{
    /// <summary>MPICH's launcher: mpiexec.mpich, or mpiexec when that is MPICH's.</summary>
    public static string Launcher
    {
        get
        {
            foreach (string candidate in new[] { "/usr/bin/mpiexec.mpich", "/usr/bin/mpiexec.hydra", "/usr/bin/mpiexec" })
            {
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }

            throw new InvalidOperationException("MPICH's mpiexec is not installed; install it with 'apt-get install -y mpich' (.ci/run does)");
        }
    }

    /// <summary>The worker's assembly, copied beside the tests by the project reference.</summary>
    public static string WorkerPath
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "FastAttention.Distributed.Worker.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException("the test worker was not built beside the tests", path);
        }
    }

    /// <summary>Runs the worker's <paramref name="scenario"/> on <paramref name="ranks"/> processes.</summary>
    /// <param name="ranks">The number of processes.</param>
    /// <param name="scenario">The scenario name and its arguments.</param>
    /// <returns>The result.</returns>
    public static MpiResult Worker(int ranks, params string[] scenario) => Run(ranks, ["dotnet", WorkerPath, .. scenario]);

    /// <summary>Runs <paramref name="command"/> under <c>mpiexec -n ranks</c>, killing the whole job after <paramref name="timeout"/> (default 3 minutes).</summary>
    /// <param name="ranks">The number of processes.</param>
    /// <param name="command">The program and its arguments.</param>
    /// <param name="timeout">The deadline.</param>
    /// <param name="launcherArguments">Extra mpiexec arguments, before -n.</param>
    /// <param name="environment">Extra environment variables for every rank.</param>
    /// <returns>The result.</returns>
    public static MpiResult Run(int ranks, IReadOnlyList<string> command, TimeSpan? timeout = null, IReadOnlyList<string>? launcherArguments = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        List<string> arguments = [.. launcherArguments ?? [], "-n", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture)];
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            arguments.AddRange(["-genv", name, value]);
        }

        arguments.AddRange(command);
        return Execute(Launcher, arguments, timeout ?? TimeSpan.FromMinutes(3));
    }

    /// <summary>Runs a program to its end or the deadline, capturing both streams.</summary>
    /// <param name="program">The program.</param>
    /// <param name="arguments">Its arguments.</param>
    /// <param name="timeout">The deadline, after which the process tree is killed.</param>
    /// <returns>The result.</returns>
    public static MpiResult Execute(string program, IReadOnlyList<string> arguments, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        // The tests' own environment must not leak an outer MPI job's identity into the child.
        foreach (string name in new[] { "PMI_RANK", "PMI_SIZE", "PMI_FD", "PMI_PORT" })
        {
            start.Environment.Remove(name);
        }

        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return new MpiResult(-1, output.Result, error.Result + $"\n(killed at the {timeout.TotalSeconds:0} s deadline)", clock.Elapsed);
        }

        process.WaitForExit();
        return new MpiResult(process.ExitCode, output.Result, error.Result, clock.Elapsed);
    }
}
