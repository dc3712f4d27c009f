using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>The lab's timing loop (<see cref="TimedRuns"/>) on this command's progress display and Ctrl-C.</summary>
internal static class Timing
{
    /// <summary>
    /// Runs <paramref name="run"/> <paramref name="runs"/> times and returns the times in seconds, sorted. Each run
    /// is a cancellation point; with a <paramref name="label"/> the progress display counts the runs.
    /// </summary>
    public static double[] Repeat(Action run, int runs, string? label = null) => TimedRuns.Repeat(run, runs, Progress.Current.ForLab(), label);

    /// <summary>The median of sorted times (the mean of the middle two for an even count).</summary>
    public static double Median(double[] sorted) => TimedRuns.Median(sorted);
}
