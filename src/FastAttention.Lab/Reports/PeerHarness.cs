using System.Diagnostics;
using System.Text.Json;

namespace FastAttention.Lab.Reports;

/// <summary>The peer harness bench/peers/run.sh (ONNX Runtime, NumPy): running it and reading its results.jsonl.</summary>
internal static class PeerHarness
{
    /// <summary>One implementation's line of a harness run.</summary>
    public sealed record Row(string Impl, int Threads, double Seconds, double Error);

    public static List<Row> Read(string results)
    {
        var rows = new List<Row>();
        foreach (string line in File.ReadLines(results).Where(l => l.Trim().Length > 0))
        {
            using JsonDocument json = JsonDocument.Parse(line);
            JsonElement r = json.RootElement;
            rows.Add(new(r.GetProperty("impl").GetString() ?? "?", r.GetProperty("threads").GetInt32(), r.GetProperty("medianSeconds").GetDouble(), r.GetProperty("maxRelativeError").GetDouble()));
        }

        return rows;
    }

    /// <summary>ONNX Runtime's time over <paramref name="row"/>'s, at the same thread count in the same run.</summary>
    public static double? Ratio(List<Row> run, Row row) =>
        run.FirstOrDefault(x => x.Impl == "onnxruntime" && x.Threads == row.Threads) is { } ort ? ort.Seconds / row.Seconds : null;

    /// <summary>The CPU the harness printed ("CPU: model, N cores; date"), if it did.</summary>
    public static string? CpuLine(string output) =>
        output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith("CPU: ", StringComparison.Ordinal)) is string line ? line[5..] : null;

    /// <summary>Runs the harness with bash in <paramref name="repo"/>, killing it when the run is cancelled.</summary>
    public static (int Code, string Output) Run(string harness, string repo, IEnumerable<string> args, LabProgress progress)
    {
        var info = new ProcessStartInfo("bash") { WorkingDirectory = repo, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(harness);
        foreach (string arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using Process process = Process.Start(info) ?? throw new InvalidOperationException("report: cannot start bash for the peer harness");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> errors = process.StandardError.ReadToEndAsync();
        while (!process.WaitForExit(200))
        {
            if (progress.Cancellation.IsCancellationRequested)
            {
                process.Kill(entireProcessTree: true);
                progress.ThrowIfCancelled();
            }
        }

        return (process.ExitCode, output.GetAwaiter().GetResult() + errors.GetAwaiter().GetResult());
    }
}
