using BenchmarkDotNet.Running;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// Peer benchmarks. <c>-- --quick [--runs N]</c>: a Stopwatch table (median of N runs); anything else goes to
/// BenchmarkDotNet, e.g. <c>-- --filter '*'</c>.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Contains("--quick"))
        {
            int at = Array.IndexOf(args, "--runs");
            int runs = at >= 0 && at + 1 < args.Length && int.TryParse(args[at + 1], out int r) && r > 0 ? r : 5;
            return QuickRun.Run(runs);
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
