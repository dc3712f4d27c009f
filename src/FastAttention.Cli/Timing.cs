using System.Diagnostics;

namespace FastAttention.Cli;

/// <summary>The one timing loop the bench and demo commands use: repeated runs, sorted, median.</summary>
internal static class Timing
{
    /// <summary>
    /// Runs <paramref name="run"/> <paramref name="runs"/> times and returns the times in seconds, sorted. Each run
    /// is a cancellation point; with a <paramref name="label"/> the progress display counts the runs.
    /// </summary>
    public static double[] Repeat(Action run, int runs, string? label = null)
    {
        var times = new double[runs];
        var watch = new Stopwatch();
        Progress progress = Progress.Current;
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

    /// <summary>The median of sorted times (the mean of the middle two for an even count).</summary>
    public static double Median(double[] sorted) =>
        sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
}
