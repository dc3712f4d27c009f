using Spectre.Console;

namespace FastAttention.Cli;

/// <summary>The <c>fastattn</c> entry point.</summary>
internal static class Program
{
    /// <summary>How long a command gets after Ctrl-C to reach a cancellation point before the process leaves anyway.</summary>
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Set while a command that stops at its own cancellation points and then saves its work (training) runs: Ctrl-C
    /// then waits for it instead of leaving after <see cref="Grace"/>; a second Ctrl-C still leaves at once.
    /// </summary>
    public static volatile bool HoldExitAfterCtrlC;

    private static int Main(string[] args)
    {
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            // Output files are written to a temp file and renamed, so a file is either whole or absent; the
            // temp files of writes in flight are removed on every way out.
            if (cancel.IsCancellationRequested)
            {
                TensorFiles.DeleteTempFilesInFlight(); // a second Ctrl-C: leave now
                return;
            }

            e.Cancel = true;
            cancel.Cancel();

            // A single library call (one big attention) has no cancellation point inside: give the command a
            // moment to reach one, then leave anyway.
            _ = Task.Run(async () =>
            {
                await Task.Delay(Grace).ConfigureAwait(false);
                if (HoldExitAfterCtrlC)
                {
                    return;
                }

                TensorFiles.DeleteTempFilesInFlight();
                await Console.Error.WriteLineAsync("fastattn: cancelled").ConfigureAwait(false);
                Environment.Exit(ExitCode.Cancelled);
            });
        };

        bool terminal = !Console.IsOutputRedirected && !Console.IsErrorRedirected && Environment.GetEnvironmentVariable("TERM") is not "dumb";
        return Cli.Run(args, Console.Out, Console.Error, terminal ? AnsiConsole.Console : null, cancel.Token);
    }
}
