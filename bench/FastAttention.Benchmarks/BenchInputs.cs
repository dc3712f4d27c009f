namespace FastAttention.Benchmarks;

/// <summary>The seeded inputs every single-head benchmark uses.</summary>
internal static class BenchInputs
{
    /// <summary>Q, K, V uniform in [-1, 1] (seed 42), each n x d, and an output buffer.</summary>
    public static (float[] Q, float[] K, float[] V, float[] O) Uniform(int n, int d)
    {
        var random = new Random(42);
        float[] Fill() => [.. Enumerable.Range(0, n * d).Select(_ => (float)((random.NextDouble() * 2) - 1))];
        return (Fill(), Fill(), Fill(), new float[n * d]);
    }
}
