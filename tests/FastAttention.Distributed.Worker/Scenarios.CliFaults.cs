using System.Diagnostics;
using System.Globalization;

namespace FastAttention.Distributed.Worker;

public static partial class Scenarios
{
    /// <summary>
    /// A rank that dies abruptly: started beside <c>fastattn ... --distributed</c> ranks in one MPI job (mpiexec's "A : B" form),
    /// it joins MPI's world, waits the given milliseconds (while the others are inside their run) and kills itself with SIGKILL,
    /// as a crashed or OOM-killed node would. The test checks every other rank leaves promptly and no output appears.
    /// </summary>
    [Scenario("die")]
    private static string Die(Communicator comm, string[] args)
    {
        int milliseconds = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 500;
        Thread.Sleep(milliseconds);
        Console.Out.Flush();
        Process.GetCurrentProcess().Kill();
        return $"rank {comm.Rank} should have died";
    }
}
