using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastAttention.Tests.Support;
using Spectre.Console;

namespace FastAttention.Tests;

/// <summary>Progress on a terminal, silence otherwise, and Ctrl-C leaving no partial output.</summary>
public class ProgressTests
{
    private static IAnsiConsole Terminal(StringWriter writer) => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Ansi = AnsiSupport.Yes,
        ColorSystem = ColorSystemSupport.Standard,
        Interactive = InteractionSupport.Yes,
        Out = new AnsiConsoleOutput(writer),
    });

    [Fact]
    public void On_a_terminal_the_progress_display_runs_and_the_results_print_above_it()
    {
        var screen = new StringWriter();
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = FastAttention.Cli.Cli.Run(["bench", "--n", "256", "--repeat", "3", "--threads", "1"], stdout, stderr, Terminal(screen));
        Assert.True(code == 0, stderr.ToString());
        string shown = screen.ToString();
        Assert.Contains("median", shown);          // the result line went through the terminal
        Assert.Contains("\u001b[", shown);         // with the live display's escape sequences around it
        Assert.Empty(stdout.ToString());           // not also to the raw writer
    }

    [Fact]
    public void Json_output_stays_clean_even_on_a_terminal()
    {
        var screen = new StringWriter();
        var stdout = new StringWriter();
        int code = FastAttention.Cli.Cli.Run(["bench", "--n", "256", "--repeat", "3", "--threads", "1", "--json"], stdout, new StringWriter(), Terminal(screen));
        Assert.Equal(0, code);
        using JsonDocument json = JsonDocument.Parse(stdout.ToString());
        Assert.True(json.RootElement.GetProperty("medianSeconds").GetDouble() > 0);
        Assert.Empty(screen.ToString());
    }

    [Fact]
    public void Redirected_output_has_no_escape_sequences()
    {
        (int code, string stdout, _) = CliRun.Run("bench", "--n", "256", "--repeat", "3", "--threads", "1");
        Assert.Equal(0, code);
        Assert.DoesNotContain('\u001b', stdout);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Cancelling_mid_experiment_exits_130_and_writes_no_file()
    {
        string dir = Data.TempDir();
        using var cancel = new CancellationTokenSource();
        var stdout = new CancelOnFirstLine(cancel);
        var stderr = new StringWriter();
        int code = FastAttention.Cli.Cli.Run(["experiment", "crossover", "--out", dir], stdout, stderr, null, cancel.Token);
        Assert.Equal(130, code);
        Assert.Contains("cancelled", stderr.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Fact]
    public void Cancelled_before_writing_an_output_leaves_no_file()
    {
        string dir = Data.TempDir();
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        string q = Data.Fixture("ocr", "line40", "block2", "q.npy");
        var stderr = new StringWriter();
        int code = FastAttention.Cli.Cli.Run(["attend", "--q", q, "--k", q, "--v", q, "--out", Path.Combine(dir, "o.npy")], new StringWriter(), stderr, null, cancel.Token);
        Assert.Equal(130, code);
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Fact]
    [Trait("Category", "Slow")]
    public async Task Sigint_stops_the_real_tool_promptly_with_no_partial_output()
    {
        if (OperatingSystem.IsWindows())
        {
            return; // SIGINT is a POSIX signal; Ctrl-C on Windows goes through the same CancelKeyPress handler.
        }

        string tool = Path.Combine(Data.RepoRoot, "artifacts", "bin", "FastAttention.Cli", Data.Configuration.ToLowerInvariant(), "fastattn");
        Assert.True(File.Exists(tool), "the CLI is built next to the tests: " + tool);
        string dir = Data.TempDir();
        var info = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { "experiment", "crossover", "--out", dir })
        {
            info.ArgumentList.Add(arg);
        }

        using Process process = Process.Start(info)!;
        Task<string> errors = process.StandardError.ReadToEndAsync();
        Assert.NotNull(process.StandardOutput.ReadLine()); // the experiment is under way
        (int killCode, string killOutput) = Processes.Run("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)], dir, TimeSpan.FromSeconds(30));
        Assert.True(killCode == 0, killOutput);
        Task<string> rest = process.StandardOutput.ReadToEndAsync();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(limit.Token); // throws if the tool did not stop after SIGINT
        Assert.Equal(130, process.ExitCode);
        Assert.Contains("cancelled", await errors);
        _ = await rest;
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    /// <summary>A stdout that cancels at the first complete line (the first step of an experiment).</summary>
    private sealed class CancelOnFirstLine(CancellationTokenSource cancel) : StringWriter
    {
        public override Encoding Encoding => Encoding.UTF8;

        public override void Write(char value)
        {
            base.Write(value);
            if (value == '\n')
            {
                cancel.Cancel();
            }
        }
    }
}
