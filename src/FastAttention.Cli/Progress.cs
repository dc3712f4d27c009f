using System.Text;
using FastAttention.Lab;
using Spectre.Console;

namespace FastAttention.Cli;

/// <summary>
/// Progress and cancellation for one command run. On a terminal (and without <c>--json</c>) a Spectre.Console
/// progress line shows the current step, a bar when the fraction done is known, and the elapsed time; the
/// command's own output is printed above it. Otherwise it is silent. Every <see cref="Step"/> (and every
/// timed run in <see cref="Timing.Repeat"/>) is a cancellation point: after Ctrl-C it throws
/// <see cref="OperationCanceledException"/>, which <see cref="Cli.Run"/> turns into exit code 130.
/// The run's instance is ambient (<see cref="Current"/>, flowing with the call) so shared helpers reach it
/// without threading it through every signature.
/// </summary>
internal sealed class Progress
{
    private static readonly AsyncLocal<Progress?> Ambient = new();

    private readonly ProgressTask? _task;
    private readonly string _name;

    private Progress(string name, CancellationToken cancellation, ProgressTask? task)
    {
        _name = name;
        Cancellation = cancellation;
        _task = task;
    }

    /// <summary>The progress of the command running on this call path (a silent, never-cancelled one outside a command).</summary>
    public static Progress Current => Ambient.Value ?? new Progress(string.Empty, CancellationToken.None, null);

    /// <summary>Signalled by Ctrl-C.</summary>
    public CancellationToken Cancellation { get; }

    /// <summary>
    /// Runs <paramref name="body"/> as command <paramref name="name"/>: with a live progress display on
    /// <paramref name="terminal"/> when given, silently otherwise. <paramref name="body"/> receives the writer for
    /// its ordinary output (on a terminal, lines are printed above the display).
    /// </summary>
    public static int Run(string name, IAnsiConsole? terminal, TextWriter stdout, CancellationToken cancellation, Func<TextWriter, int> body)
    {
        Progress? previous = Ambient.Value;
        try
        {
            if (terminal is null)
            {
                Ambient.Value = new Progress(name, cancellation, null);
                return body(stdout);
            }

            return terminal.Progress()
                .AutoClear(true)
                .Columns(new SpinnerColumn(), new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(context =>
                {
                    ProgressTask task = context.AddTask(Markup.Escape(name), maxValue: 1);
                    task.IsIndeterminate = true;
                    Ambient.Value = new Progress(name, cancellation, task);
                    using var lines = new TerminalLineWriter(terminal);
                    return body(lines);
                });
        }
        finally
        {
            Ambient.Value = previous;
        }
    }

    /// <summary>Shows <paramref name="status"/> (and the fraction done, when known); throws if Ctrl-C was pressed.</summary>
    public void Step(string status, double? fraction = null)
    {
        Cancellation.ThrowIfCancellationRequested();
        Show(status, fraction);
    }

    /// <summary>
    /// Shows <paramref name="status"/> without being a cancellation point: for the writing of outputs, which,
    /// once started, finishes (a command leaves all its files or none, unless the grace period runs out).
    /// </summary>
    public void Show(string status, double? fraction = null)
    {
        if (_task is null)
        {
            return;
        }

        _task.Description = Markup.Escape(status.Length > 0 ? $"{_name}: {Shorten(status)}" : _name);
        if (fraction is double f)
        {
            _task.IsIndeterminate = false;
            _task.Value = Math.Clamp(f, 0, 1);
        }
    }

    /// <summary>Throws <see cref="OperationCanceledException"/> if Ctrl-C was pressed.</summary>
    public void ThrowIfCancelled() => Cancellation.ThrowIfCancellationRequested();

    /// <summary>This run's progress as the lab takes it: its statuses shown here, cancelled by Ctrl-C.</summary>
    public LabProgress ForLab() => new(new LabDisplay(this), Cancellation);

    private static string Shorten(string status)
    {
        string line = status.ReplaceLineEndings(" ");
        return line.Length <= 70 ? line : line[..67] + "...";
    }

    /// <summary>Shows the lab's statuses on this run's display.</summary>
    private sealed class LabDisplay(Progress progress) : IProgress<LabStatus>
    {
        public void Report(LabStatus value) => progress.Show(value.Text, value.Fraction);
    }

    /// <summary>A writer that prints whole lines through the terminal, so they appear above the live display.</summary>
    private sealed class TerminalLineWriter(IAnsiConsole terminal) : TextWriter
    {
        private readonly StringBuilder _line = new();

        public override Encoding Encoding => Encoding.UTF8;

        public override void Write(char value)
        {
            if (value == '\n')
            {
                terminal.WriteLine(_line.ToString().TrimEnd('\r'));
                _line.Clear();
            }
            else
            {
                _line.Append(value);
            }
        }

        protected override void Dispose(bool disposing)
        {
            if (_line.Length > 0)
            {
                terminal.WriteLine(_line.ToString());
                _line.Clear();
            }

            base.Dispose(disposing);
        }
    }
}
