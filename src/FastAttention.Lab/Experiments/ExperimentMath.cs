namespace FastAttention.Lab;

/// <summary>Helpers the experiments share: float64 reference rows, seeded inputs, slopes, timing.</summary>
public static partial class Experiments
{

    /// <summary>Row i of softmax (or, with <paramref name="power"/>, (s q.k)^p) attention in float64, one head.</summary>
    private static double[] ReferenceRow(float[] q, float[] k, float[] v, AttentionShape shape, int i, double scale, int power = 0)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount;
        double[] scores = new double[nk];
        for (int j = 0; j < nk; j++)
        {
            double dot = 0;
            for (int t = 0; t < d; t++)
            {
                dot += (double)q[(i * d) + t] * k[(j * d) + t];
            }

            scores[j] = scale * dot;
        }

        double max = scores.Max();
        double[] row = new double[dv];
        double sum = 0;
        for (int j = 0; j < nk; j++)
        {
            double w = power > 0 ? Math.Pow(scores[j], power) : Math.Exp(scores[j] - max);
            sum += w;
            for (int c = 0; c < dv; c++)
            {
                row[c] += w * v[(j * dv) + c];
            }
        }

        for (int c = 0; c < dv; c++)
        {
            row[c] /= sum;
        }

        return row;
    }

    private static float[] Uniform(Random random, long count, double bound)
    {
        float[] x = new float[count];
        for (long i = 0; i < count; i++)
        {
            x[i] = (float)(((random.NextDouble() * 2) - 1) * bound);
        }

        return x;
    }

    private static float[] Gaussian(Random random, long count, double sigma)
    {
        float[] x = new float[count];
        for (long i = 0; i < count; i++)
        {
            x[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        }

        return x;
    }

    /// <summary>The least-squares slope of log y against log x (a measured growth rate or exponent).</summary>
    private static double LogLogSlope(IEnumerable<(double X, double Y)> points)
    {
        double[] lx = [.. points.Select(p => Math.Log(p.X))], ly = [.. points.Select(p => Math.Log(p.Y))];
        double mx = lx.Average(), my = ly.Average();
        return lx.Zip(ly, (x, y) => (x - mx) * (y - my)).Sum() / lx.Sum(x => (x - mx) * (x - mx));
    }

    private static string Sci(double? x) => x is double v ? NumberText.Format(v) : "-";
}
