using System.Diagnostics;

namespace FastAttention.Lab;

/// <summary>The one timing loop the lab's benchmarks and experiments (and the CLI's demo) use: repeated runs, sorted, median.</summary>
public static class TimedRuns
{
    /// <summary>
    /// Runs <paramref name="run"/> <paramref name="runs"/> times and returns the times in seconds, sorted. Each run is a
    /// cancellation point; with a <paramref name="label"/> the progress counts the runs.
    /// </summary>
    /// <param name="run">The work to time.</param>
    /// <param name="runs">How many timed runs.</param>
    /// <param name="progress">Progress and cancellation (silent when null).</param>
    /// <param name="label">What is being timed, for the progress display; null reports nothing.</param>
    /// <returns>The times in seconds, ascending.</returns>
    public static double[] Repeat(Action run, int runs, LabProgress? progress = null, string? label = null)
    {
        ArgumentNullException.ThrowIfNull(run);
        progress ??= LabProgress.None;
        var times = new double[runs];
        var watch = new Stopwatch();
        for (int r = 0; r < runs; r++)
        {
            if (label is null)
            {
                progress.ThrowIfCancelled();
            }
            else
            {
                progress.Step($"{label}: run {r + 1} of {runs}", (double)r / runs);
            }

            watch.Restart();
            run();
            times[r] = watch.Elapsed.TotalSeconds;
        }

        Array.Sort(times);
        return times;
    }

    /// <summary>The median of sorted values (the mean of the middle two for an even count).</summary>
    /// <param name="sorted">Values in ascending order, at least one.</param>
    /// <returns>The median.</returns>
    public static double Median(IReadOnlyList<double> sorted)
    {
        ArgumentNullException.ThrowIfNull(sorted);
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
