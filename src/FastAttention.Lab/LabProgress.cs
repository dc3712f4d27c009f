using System.Text;

namespace FastAttention.Lab;

/// <summary>One progress report: what the lab is doing and, when known, the fraction done.</summary>
/// <param name="Text">The current step, one line.</param>
/// <param name="Fraction">The fraction done in [0, 1], or null when unknown.</param>
public readonly record struct LabStatus(string Text, double? Fraction);

/// <summary>
/// Progress and cancellation for one lab run (an experiment, the report, a benchmark). The caller passes where the
/// status goes (a progress bar, or nothing) and the token that cancels the run; every <see cref="Step"/> is a
/// cancellation point. The lab knows nothing of terminals or command lines.
/// </summary>
/// <param name="display">Receives each status; null for a silent run.</param>
/// <param name="cancellation">Cancels the run at its next step.</param>
public sealed class LabProgress(IProgress<LabStatus>? display = null, CancellationToken cancellation = default)
{
    /// <summary>A silent, never-cancelled run.</summary>
    public static LabProgress None { get; } = new();

    /// <summary>The token that cancels the run.</summary>
    public CancellationToken Cancellation => cancellation;

    /// <summary>Reports <paramref name="status"/> (and the fraction done, when known); throws if the run was cancelled.</summary>
    /// <param name="status">The current step.</param>
    /// <param name="fraction">The fraction done, when known.</param>
    /// <exception cref="OperationCanceledException">The run was cancelled.</exception>
    public void Step(string status, double? fraction = null)
    {
        cancellation.ThrowIfCancellationRequested();
        display?.Report(new LabStatus(status, fraction));
    }

    /// <summary>Throws <see cref="OperationCanceledException"/> if the run was cancelled.</summary>
    /// <exception cref="OperationCanceledException">The run was cancelled.</exception>
    public void ThrowIfCancelled() => cancellation.ThrowIfCancellationRequested();

    /// <summary>A writer for log lines: each line goes to <paramref name="inner"/> and is also the current status (so a cancellation point).</summary>
    /// <param name="inner">Where the lines are written.</param>
    /// <returns>The writer.</returns>
    public TextWriter Log(TextWriter inner) => new LogWriter(inner, this);

    private sealed class LogWriter(TextWriter inner, LabProgress progress) : TextWriter
    {
        private readonly StringBuilder _line = new();

        public override Encoding Encoding => inner.Encoding;

        public override void Write(char value)
        {
            inner.Write(value);
            if (value == '\n')
            {
                string line = _line.ToString().TrimEnd('\r');
                _line.Clear();
                progress.Step(line);
            }
            else
            {
                _line.Append(value);
            }
        }

        public override void Flush() => inner.Flush();
    }
}
