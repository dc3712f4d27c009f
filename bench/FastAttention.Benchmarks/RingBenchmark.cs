using System.Globalization;
using FastAttention.Distributed;

namespace FastAttention.Benchmarks;

/// <summary>
/// Ring attention under mpiexec (or alone): one head, n tokens, d = dv, seeded inputs every rank generates alike, the zig-zag
/// layout for causal and contiguous otherwise. One warm-up forward, then one timed forward and one timed backward; rank 0
/// prints every rank's compute and wait time, bytes sent per step against the theory (one K+V block), wall time and GFLOP/s,
/// and a scaling hint: the share of the wall time the ranks spent computing, and the slowest rank's compute over the mean.
/// Run: <c>mpiexec -n 2 dotnet artifacts/bin/FastAttention.Benchmarks/release/FastAttention.Benchmarks.dll ring 16384 64 [causal] [inline] [threads per rank]</c>;
/// threads default to cores / ranks; <c>inline</c> computes on the MPI thread (<see cref="RingAttentionOptions.ComputeOnCallingThread"/>), to see what the overlap buys.
/// </summary>
public static class RingBenchmark
{
    public static void Run(string[] args)
    {
        int n = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 16384;
        int d = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 64;
        bool causal = args.Contains("causal"), inline = args.Contains("inline");
        using var comm = Communicator.FromEnvironment();
        int threads = args.Skip(3).Where(a => a is not ("causal" or "inline")).Select(a => int.Parse(a, CultureInfo.InvariantCulture)).FirstOrDefault(Math.Max(1, Environment.ProcessorCount / comm.Size));
        var shape = AttentionShape.SingleHead(n, d);
        var layout = causal ? ShardLayout.ZigZag : ShardLayout.Contiguous;
        var options = new RingAttentionOptions { Attention = new ExactAttentionOptions { Causal = causal, MaxDegreeOfParallelism = threads }, Layout = layout, ComputeOnCallingThread = inline };
        var mine = SequenceShard.For(n, comm.Rank, comm.Size, layout);

        var random = new Random(11);
        float[] Shard(long length)
        {
            float[] global = new float[length];
            for (long i = 0; i < length; i++)
            {
                global[i] = (2 * random.NextSingle()) - 1;
            }

            float[] local = new float[length / n * mine.Count];
            ShardTensors.Take(global, mine, d, local);
            return local;
        }

        float[] q = Shard(shape.QueryLength), k = Shard(shape.KeyLength), v = Shard(shape.ValueLength), dOut = Shard(shape.OutputLength);
        float[] o = new float[q.Length], lse = new float[mine.Count], dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        RingAttention.Compute(comm, q, k, v, shape, o, lse, options);
        comm.Barrier();
        var forward = RingAttention.Compute(comm, q, k, v, shape, o, lse, options);
        comm.Barrier();
        var backward = RingAttention.Backward(comm, q, k, v, o, dOut, lse, shape, dq, dk, dv, options);

        if (comm.Rank == 0)
        {
            Console.WriteLine($"ring attention, {comm.Transport}, {comm.Size} rank(s) x {threads} thread(s), n = {n}, d = dv = {d}, 1 head, {(causal ? "causal" : "non-causal")}, {layout}, {(inline ? "compute on the MPI thread" : "compute on a worker, MPI thread polling")}, "
                + $"{Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        }

        Report(comm, "forward", forward, mine.Count, d);
        Report(comm, "backward", backward, mine.Count, d);
    }

    /// <summary>Gathers every rank's figures to rank 0, which prints them.</summary>
    private static void Report(Communicator comm, string pass, RingRun run, long localN, int d)
    {
        long ownBlock = localN * 2 * d * sizeof(float); // K and V rows of this rank's shard: what step 0 sends
        double[] mine = [run.ComputeTotal, run.WaitTotal, run.TotalSeconds, run.Flops, run.BytesSent, run.Steps > 1 ? run.StepBytes[0] : 0, ownBlock, .. run.ComputeSeconds, .. run.WaitSeconds];
        double[][] all = comm.Allgather<double>(mine);
        if (comm.Rank != 0)
        {
            return;
        }

        foreach (var (figures, rank) in all.Select((f, r) => (f, r)))
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{pass,-8} rank {rank}: compute {figures[0] * 1e3,8:F1} ms, wait {figures[1] * 1e3,7:F1} ms, total {figures[2] * 1e3,8:F1} ms, {figures[3] / figures[2] / 1e9,6:F1} GFLOP/s, "
                + $"sent {figures[4] / 1e6:F2} MB ({figures[5] / 1e6:F3} MB at step 0; its K+V block is {figures[6] / 1e6:F3} MB); "
                + $"steps compute/wait ms: {string.Join(" ", Enumerable.Range(0, run.Steps).Select(t => $"{figures[7 + t] * 1e3:F1}/{figures[7 + run.Steps + t] * 1e3:F1}"))}"));
        }

        double wall = all.Max(f => f[2]), flops = all.Sum(f => f[3]), meanCompute = all.Average(f => f[0]);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{pass,-8} all: {wall * 1e3:F1} ms wall, {flops / wall / 1e9:F1} GFLOP/s; computing {all.Sum(f => f[0]) / (all.Length * wall):P0} of the ranks' wall time, "
            + $"slowest compute {all.Max(f => f[0]) / meanCompute:F2} x the mean (scaling efficiency is at most the first; compare GFLOP/s with -n 1)"));
    }
}
