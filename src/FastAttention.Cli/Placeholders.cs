using FastAttention.Distributed;

namespace FastAttention.Cli;

// PLACEHOLDER (to delete when the levpoly helper's FastAttention.Distributed.DistributedLeverageScores lands in main): the same
// call shape, computed by gathering every rank's rows (contiguous, in rank order) and scoring them all on each rank.
internal static class DistributedLeverageScores
{
    public static (double[] Bounds, int Rank) SensitivityBounds(Communicator comm, ReadOnlySpan<float> keys, int dimension, double p = 2, int maxDegreeOfParallelism = 0)
    {
        float[][] pieces = comm.Allgather(keys);
        float[] all = [.. pieces.SelectMany(x => x)];
        (double[] bounds, int rank) = FastAttention.Leverage.UniversalSet.SensitivityBounds(all, dimension, p, maxDegreeOfParallelism);
        int before = pieces.Take(comm.Rank).Sum(x => x.Length) / dimension;
        return (bounds[before..(before + (keys.Length / dimension))], rank);
    }
}
