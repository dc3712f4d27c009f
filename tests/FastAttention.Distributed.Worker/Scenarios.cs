using System.Reflection;

namespace FastAttention.Distributed.Worker;

/// <summary>Marks a static method <c>string M(Communicator, string[])</c> as the scenario of that name.</summary>
/// <param name="name">The name on the command line.</param>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ScenarioAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}

/// <summary>
/// The scenarios, by name, gathered from every <see cref="ScenarioAttribute"/> method of this assembly (one file per
/// subject: Scenarios.Ring.cs, ...). Each returns a short summary or throws <see cref="DistributedException"/> when a check fails.
/// </summary>
public static partial class Scenarios
{
    public static readonly IReadOnlyDictionary<string, Func<Communicator, string[], string>> All = typeof(Scenarios).Assembly.GetTypes()
        .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static))
        .Where(m => m.GetCustomAttribute<ScenarioAttribute>() is not null)
        .ToDictionary(m => m.GetCustomAttribute<ScenarioAttribute>()!.Name, m => m.CreateDelegate<Func<Communicator, string[], string>>());

    /// <summary>Collectives and a ring exchange: every rank checks what it got against what the others must have sent.</summary>
    [Scenario("smoke")]
    private static string Smoke(Communicator comm, string[] args)
    {
        int p = comm.Size, r = comm.Rank;
        double[] sum = [r + 1, 10.0 * r];
        comm.AllreduceSum(sum);
        Require(sum[0] == p * (p + 1) / 2.0 && sum[1] == 10.0 * p * (p - 1) / 2, $"allreduce gave {sum[0]}, {sum[1]}");
        int[][] gathered = comm.Allgather<int>(Enumerable.Range(0, r + 1).ToArray());
        for (int s = 0; s < p; s++)
        {
            Require(gathered[s].SequenceEqual(Enumerable.Range(0, s + 1)), $"allgather from rank {s} wrong");
        }

        float[] broadcast = r == 0 ? [1f, 2f, 3f] : new float[3];
        comm.Broadcast<float>(broadcast, 0);
        Require(broadcast[2] == 3f, "broadcast wrong");

        // A message over the 1 GiB chunk limit is not needed here; 4 MiB crosses MPICH's eager limit (rendezvous protocol).
        float[] mine = Enumerable.Range(0, 1 << 20).Select(i => (float)(i + r)).ToArray();
        float[] theirs = new float[mine.Length];
        if (p > 1)
        {
            int left = (r - 1 + p) % p;
            var receive = comm.StartReceive<float>(theirs, left, 7);
            var send = comm.StartSend<float>(mine, (r + 1) % p, 7);
            receive.Wait();
            send.Wait();
            Require(theirs[5] == 5 + left, "ring message wrong");
        }

        comm.Agree(null);
        comm.Barrier();
        return $"{comm.Transport}, sent {comm.BytesSent} bytes";
    }

    /// <summary>Fails on the rank given as the first argument (default 1) after reading nothing: every rank must exit with that rank's message.</summary>
    [Scenario("agree-failure")]
    private static string AgreeFailure(Communicator comm, string[] args)
    {
        int failing = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 1;
        comm.Agree(comm.Rank == failing ? new InvalidDataException("shard q.npy: value 3 of row 7 is NaN") : null);
        return "no failure seen";
    }

    /// <summary>Throws a DistributedException when <paramref name="condition"/> is false.</summary>
    /// <param name="condition">The check.</param>
    /// <param name="what">What went wrong.</param>
    public static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new DistributedException(what);
        }
    }
}
