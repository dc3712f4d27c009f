namespace FastAttention.Distributed.Worker;

/// <summary>
/// Seeded global inputs and array-returning forms of <see cref="ShardTensors"/>: what the scenarios and the xunit tests use
/// to give every rank its part of one problem and to put the parts back together.
/// </summary>
public static class ShardSlices
{
    /// <summary>Standard normal floats from a seed (Box–Muller), the same on every rank.</summary>
    /// <param name="count">How many.</param>
    /// <param name="seed">The seed.</param>
    /// <returns>The values.</returns>
    public static float[] Normal(long count, int seed)
    {
        var random = new Random(seed);
        float[] result = new float[count];
        for (long i = 0; i < count; i++)
        {
            double u = 1.0 - random.NextDouble(), v = random.NextDouble();
            result[i] = (float)(Math.Sqrt(-2.0 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
        }

        return result;
    }

    /// <summary>The shard's rows of a global tensor, in a new array (<see cref="ShardTensors.Take"/>).</summary>
    /// <param name="global">The whole tensor, <c>[outer, shard.Length, width]</c>.</param>
    /// <param name="shard">The rank's shard.</param>
    /// <param name="width">Floats per row.</param>
    /// <returns>The shard tensor.</returns>
    public static float[] Take(float[] global, SequenceShard shard, int width)
    {
        float[] local = new float[global.Length / (shard.Length * width) * shard.Count * width];
        ShardTensors.Take(global, shard, width, local);
        return local;
    }

    /// <summary>Copies a shard tensor's rows to their places in a global tensor (<see cref="ShardTensors.Place"/>).</summary>
    /// <param name="local">The shard tensor.</param>
    /// <param name="shard">The rank's shard.</param>
    /// <param name="width">Floats per row.</param>
    /// <param name="global">The whole tensor.</param>
    public static void Place(float[] local, SequenceShard shard, int width, float[] global) => ShardTensors.Place(local, shard, width, global);
}
