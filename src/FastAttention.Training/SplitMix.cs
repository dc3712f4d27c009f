namespace FastAttention.Training;

/// <summary>SplitMix64 (Steele, Lea and Flood): a fixed, documented generator, so a seed means the same order on every .NET version.</summary>
internal struct SplitMix(ulong seed)
{
    private ulong state = seed;

    public ulong Next()
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A uniform integer in [0, bound) (bound at most 2^31; the modulo bias is below 2^-32).</summary>
    public int Below(int bound) => (int)(Next() % (ulong)bound);

    /// <summary>The training order of an epoch: a Fisher-Yates shuffle of <paramref name="items"/> seeded by (seed, epoch).</summary>
    public static int[] Shuffle(IReadOnlyList<int> items, long seed, int epoch)
    {
        var order = items.ToArray();
        var random = new SplitMix(unchecked((ulong)seed * 0x2545F4914F6CDD1DUL + (ulong)epoch + 1));
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = random.Below(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }

        return order;
    }
}
