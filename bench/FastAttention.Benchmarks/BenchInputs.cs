namespace FastAttention.Benchmarks;

/// <summary>The seeded inputs every single-head benchmark uses.</summary>
internal static class BenchInputs
{
    /// <summary>Q, K, V uniform in [-1, 1] (seeded), each n x d, and an output buffer.</summary>
    public static (float[] Q, float[] K, float[] V, float[] O) Uniform(int n, int d, int seed = 42)
    {
        var random = new Random(seed);
        float[] Fill() => [.. Enumerable.Range(0, n * d).Select(_ => (float)((random.NextDouble() * 2) - 1))];
        return (Fill(), Fill(), Fill(), new float[n * d]);
    }
}
