namespace FastAttention.Tests.Support;

/// <summary>Seeded random inputs and fixture paths.</summary>
internal static class Data
{
    public static float[] Normal(long count, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        var result = new float[count];
        for (long i = 0; i < count; i++)
        {
            // Box–Muller.
            double u = 1.0 - random.NextDouble();
            double v = random.NextDouble();
            result[i] = scale * (float)(Math.Sqrt(-2.0 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
        }

        return result;
    }

    /// <summary>Entries uniform in [-bound, bound], seeded.</summary>
    public static float[] Uniform(long count, int seed, float bound)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, (int)count).Select(_ => ((random.NextSingle() * 2) - 1) * bound)];
    }

    public static (float[] Q, float[] K, float[] V) Inputs(AttentionShape s, int seed) =>
        (Normal(s.QueryLength, seed), Normal(s.KeyLength, seed + 1), Normal(s.ValueLength, seed + 2));

    /// <summary>The repository root (the folder holding FastAttention.slnx).</summary>
    public static string RepoRoot
    {
        get
        {
            string? dir = AppContext.BaseDirectory;
            while (dir is not null && !File.Exists(Path.Combine(dir, "FastAttention.slnx")))
            {
                dir = Path.GetDirectoryName(dir);
            }

            return dir ?? throw new InvalidOperationException("Cannot find the repository root above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>The build configuration these tests run from ("Release" or "Debug"), read from their output folder.</summary>
    public static string Configuration => AppContext.BaseDirectory.Replace('\\', '/').Contains("/release/", StringComparison.OrdinalIgnoreCase) ? "Release" : "Debug";

    public static string Fixture(params string[] parts) => Path.Combine([RepoRoot, "data", .. parts]);

    public static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "fastattn-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
