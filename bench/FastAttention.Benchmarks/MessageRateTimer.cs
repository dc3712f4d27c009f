using System.Diagnostics;
using System.Globalization;
using FastAttention.Distributed;

namespace FastAttention.Benchmarks;

/// <summary>
/// The message rates the distributed cost model needs, measured between ranks of one MPI job:
/// <c>mpiexec -n 2 dotnet FastAttention.Benchmarks.dll messages [repeats]</c>. Rank 0 prints, per message size, the
/// one-way time of a ping-pong between ranks 0 and 1 (half the round trip: latency for small messages, bandwidth for
/// large ones), the ring exchange (every rank sends to r + 1 and receives from r - 1 at once, as ring attention does),
/// and the time of an all-reduce of that many bytes of floats. Best of the repeats. Without mpiexec it says so.
/// </summary>
internal static class MessageRateTimer
{
    public static void Run(string[] args)
    {
        int repeats = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 20;
        using Communicator comm = Communicator.FromEnvironment();
        if (comm.Size < 2)
        {
            Console.WriteLine("messages: run under mpiexec with at least 2 ranks, e.g. mpiexec -n 2 dotnet FastAttention.Benchmarks.dll messages");
            return;
        }

        if (comm.Rank == 0)
        {
            Console.WriteLine($"{comm.Size} ranks over {comm.Transport}; best of {repeats}; {Environment.ProcessorCount} cores visible per rank");
            Console.WriteLine("| bytes | ping-pong one way (us) | ping-pong GB/s | ring exchange (us) | ring GB/s per rank | allreduce (us) |");
            Console.WriteLine("|---|---|---|---|---|---|");
        }

        for (int bytes = 8; bytes <= 64 << 20; bytes *= bytes < 1 << 16 ? 8 : 4)
        {
            float[] send = new float[bytes / 4], receive = new float[bytes / 4];
            int reps = bytes >= 16 << 20 ? Math.Max(3, repeats / 4) : repeats;
            double pingPong = double.MaxValue, ring = double.MaxValue, allreduce = double.MaxValue;
            for (int rep = 0; rep < reps; rep++)
            {
                comm.Barrier();
                var clock = Stopwatch.StartNew();
                if (comm.Rank == 0)
                {
                    comm.Send<float>(send, 1, 1);
                    comm.Receive<float>(receive, 1, 2);
                }
                else if (comm.Rank == 1)
                {
                    comm.Receive<float>(receive, 0, 1);
                    comm.Send<float>(send, 0, 2);
                }

                pingPong = Math.Min(pingPong, clock.Elapsed.TotalMicroseconds / 2);

                comm.Barrier();
                clock.Restart();
                var incoming = comm.StartReceive<float>(receive, (comm.Rank - 1 + comm.Size) % comm.Size, 3);
                var outgoing = comm.StartSend<float>(send, (comm.Rank + 1) % comm.Size, 3);
                incoming.Wait();
                outgoing.Wait();
                ring = Math.Min(ring, clock.Elapsed.TotalMicroseconds);

                comm.Barrier();
                clock.Restart();
                comm.AllreduceSum(send.AsSpan());
                allreduce = Math.Min(allreduce, clock.Elapsed.TotalMicroseconds);
                Array.Clear(send);
            }

            if (comm.Rank == 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {bytes} | {pingPong:0.0} | {bytes / pingPong / 1e3:0.00} | {ring:0.0} | {bytes / ring / 1e3:0.00} | {allreduce:0.0} |"));
            }
        }
    }
}
