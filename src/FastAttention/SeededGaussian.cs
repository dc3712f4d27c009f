namespace FastAttention;

/// <summary>
/// Standard normal values from a seeded <see cref="Random"/> by Box–Muller, both halves of each pair used
/// (<c>u1 = 1 - U, u2 = U'</c>; <c>r cos(2 pi u2)</c> then <c>r sin(2 pi u2)</c>): the same values for the same seed on
/// every machine. Sketch matrices and benchmark/experiment inputs draw from it.
/// </summary>
public static class SeededGaussian
{
    /// <summary>Fills <paramref name="target"/> with N(0, 1) values.</summary>
    public static void Fill(Random random, Span<double> target)
    {
        for (int i = 0; i < target.Length; i += 2)
        {
            (double c, double s) = Pair(random);
            target[i] = c;
            if (i + 1 < target.Length)
            {
                target[i + 1] = s;
            }
        }
    }

    /// <summary>Fills <paramref name="target"/> with N(0, 1) values rounded to float.</summary>
    public static void Fill(Random random, Span<float> target)
    {
        for (int i = 0; i < target.Length; i += 2)
        {
            (double c, double s) = Pair(random);
            target[i] = (float)c;
            if (i + 1 < target.Length)
            {
                target[i + 1] = (float)s;
            }
        }
    }

    private static (double Cos, double Sin) Pair(Random random)
    {
        double u1 = 1.0 - random.NextDouble(), u2 = random.NextDouble();
        double radius = Math.Sqrt(-2 * Math.Log(u1));
        return (radius * Math.Cos(2 * Math.PI * u2), radius * Math.Sin(2 * Math.PI * u2));
    }
}
