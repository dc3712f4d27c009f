namespace FastAttention.Distributed.Worker;

/// <summary>
/// Runs one named scenario on every rank of an MPI job (or alone) and prints one line per rank: "rank R of P: ok ..." or
/// "rank R of P: FAIL ...". FastAttention.Distributed.Tests starts it with mpiexec -n 2, 3 and 4 and reads the lines.
/// Usage: Worker &lt;scenario&gt; [args]. Exit code 0 when this rank's checks passed.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 0 || !Scenarios.All.TryGetValue(args[0], out var scenario))
        {
            Console.Error.WriteLine($"usage: worker <{string.Join("|", Scenarios.All.Keys)}> [args]");
            return 2;
        }

        using Communicator communicator = Communicator.FromEnvironment();
        string prefix = $"rank {communicator.Rank} of {communicator.Size}";
        try
        {
            string result = scenario(communicator, args[1..]);
            Console.WriteLine($"{prefix}: ok {result}");
            return 0;
        }
        catch (DistributedException e)
        {
            Console.WriteLine($"{prefix}: FAIL {e.Message}");
            return 1;
        }
    }
}
