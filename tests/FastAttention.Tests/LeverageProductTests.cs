using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>The blocked double products behind leverage scores (Gram matrix, row norms of K W) and the top-k selection.</summary>
public class LeverageProductTests
{
    public static TheoryData<int, int> Grid()
    {
        var data = new TheoryData<int, int>();
        foreach (int n in new[] { 1, 2, 7, 31, 33, 113, 257, 2049 })
        {
            foreach (int d in new[] { 1, 8, 15, 64 })
            {
                data.Add(n, d);
            }
        }

        return data;
    }

    /// <summary>G = sum_j w_j k_j k_j^T, one row at a time in double: the slow reference.</summary>
    private static (double[] Gram, double[] Magnitude) ReferenceGram(float[] k, int d, double[]? w)
    {
        int n = k.Length / d;
        double[] g = new double[d * d], magnitude = new double[d * d];
        for (int j = 0; j < n; j++)
        {
            double wj = w?[j] ?? 1;
            for (int a = 0; a < d; a++)
            {
                for (int b = 0; b < d; b++)
                {
                    double x = wj * k[(j * d) + a] * k[(j * d) + b];
                    g[(a * d) + b] += x;
                    magnitude[(a * d) + b] += Math.Abs(x);
                }
            }
        }

        return (g, magnitude);
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void The_gram_matrix_matches_a_row_by_row_double_sum_and_is_symmetric(int n, int d)
    {
        float[] k = Data.Normal((long)n * d, (n * 100) + d);
        double[] w = [.. Data.Uniform(n, n + d, 1f).Select(x => (double)x + 1)];
        foreach (double[]? weights in new[] { null, w })
        {
            ReadOnlySpan<double> g = LeverageScores.Gram(k, d, weights: weights).Matrix;
            (double[] expected, double[] magnitude) = ReferenceGram(k, d, weights);
            for (int x = 0; x < d * d; x++)
            {
                Assert.True(Math.Abs(g[x] - expected[x]) <= 1e-13 * magnitude[x] + 1e-300, $"n {n} d {d} entry {x}: {g[x]} vs {expected[x]}");
                Assert.Equal(g[x], g[(x % d * d) + (x / d)]);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Grid))]
    public void Scores_are_the_row_norms_of_k_times_the_whitening_in_double(int n, int d)
    {
        float[] k = Data.Normal((long)n * d, (n * 7) + d);
        if (d > 2)
        {
            for (int j = 0; j < n; j++)
            {
                k[(j * d) + d - 1] = k[j * d]; // a duplicate column: rank d - 1, a whitening narrower than d
            }
        }

        GramFactor factor = LeverageScores.Gram(k, d).Factor();
        double[] scores = LeverageScores.Scores(k, factor, clamp: false);
        int r = factor.Rank;
        for (int j = 0; j < n; j++)
        {
            double expected = 0, magnitude = 0;
            for (int c = 0; c < r; c++)
            {
                double y = 0, size = 0;
                for (int l = 0; l < d; l++)
                {
                    y += k[(j * d) + l] * factor.Whitening[(l * r) + c];
                    size += Math.Abs(k[(j * d) + l] * factor.Whitening[(l * r) + c]);
                }

                expected += y * y;
                magnitude += size * size;
            }

            Assert.True(Math.Abs(scores[j] - expected) <= 1e-13 * magnitude, $"n {n} d {d} row {j}: {scores[j]} vs {expected}");
        }

        Assert.Equal(r, scores.Sum(), 1e-8 * n);
    }

    [Fact]
    public void Gram_matrix_and_scores_have_the_same_bits_for_one_and_two_threads()
    {
        const int n = 5000, d = 15;
        float[] k = Data.Normal(n * d, 4);
        double[] w = [.. Data.Uniform(n, 5, 1f).Select(x => (double)x + 1)];
        Assert.Equal(LeverageScores.Gram(k, d, 1, w).Matrix.ToArray(), LeverageScores.Gram(k, d, 2, w).Matrix.ToArray());
        GramFactor factor = LeverageScores.Gram(k, d, 1).Factor();
        Assert.Equal(LeverageScores.Scores(k, factor, 1), LeverageScores.Scores(k, factor, 2));
        Assert.Equal(UniversalSet.SensitivityBounds(k, d, 1.5, 1).Bounds, UniversalSet.SensitivityBounds(k, d, 1.5, 2).Bounds);
    }

    [Fact]
    public void Top_k_is_the_first_k_by_bound_descending_then_index_with_ties_and_nan()
    {
        var random = new Random(11);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = random.Next(1, 60);
            double[] bounds = [.. Enumerable.Range(0, n).Select(_ => random.Next(4) switch { 0 => double.NaN, 1 => 0.5, _ => random.Next(5) / 4.0 })];
            int count = random.Next(1, n + 3);
            int[] expected = [.. Enumerable.Range(0, n).OrderByDescending(j => bounds[j]).ThenBy(j => j).Take(count).Order()];
            Assert.Equal(expected, UniversalSet.Top(bounds, count));
        }

        // Larger lists, including sorted, reversed and constant ones (the quickselect's bad cases), and continuous values.
        foreach (int n in new[] { 257, 3000 })
        {
            double[] continuous = [.. Enumerable.Range(0, n).Select(_ => random.NextDouble())];
            foreach (double[] bounds in new[] { continuous, [.. continuous.Order()], [.. continuous.OrderDescending()], [.. Enumerable.Repeat(0.25, n)], [.. continuous.Select(x => Math.Round(x * 8) / 8)] })
            {
                foreach (int count in new[] { 1, 2, n / 7, n / 2, n - 1 })
                {
                    int[] expected = [.. Enumerable.Range(0, n).OrderByDescending(j => bounds[j]).ThenBy(j => j).Take(count).Order()];
                    Assert.Equal(expected, UniversalSet.Top(bounds, count));
                }
            }
        }
    }
}
