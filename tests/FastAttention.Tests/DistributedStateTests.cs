using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The public pieces that let keys be split into shards (processes, or a stream) and the pieces merged: each is checked
/// against the one-call function it splits.
/// </summary>
public partial class DistributedStateTests
{
    [Fact]
    public void A_gram_matrix_from_elsewhere_scores_rows_as_the_state_it_came_from()
    {
        const int d = 7;
        float[] k = Data.Normal(61 * d, 3);
        GramState whole = LeverageScores.Gram(k, d);
        GramState copy = GramState.FromMatrix(d, whole.Matrix, whole.Rows);
        Assert.Equal(whole.Rows, copy.Rows);
        Assert.Equal(whole.Matrix.ToArray(), copy.Matrix.ToArray());
        Assert.Equal(LeverageScores.Compute(k, d), LeverageScores.Scores(k, copy.Factor()));
    }

    [Fact]
    public void Shard_gram_matrices_summed_give_the_whole_keys_scores_within_rounding()
    {
        const int d = 5;
        float[] k = Data.Normal(40 * d, 4);
        double[] sum = new double[d * d];
        foreach ((int first, int count) in new[] { (0, 13), (13, 0), (13, 27) })
        {
            double[] part = LeverageScores.Gram(k.AsSpan(first * d, count * d), d).Matrix.ToArray();
            for (int i = 0; i < sum.Length; i++)
            {
                sum[i] += part[i];
            }
        }

        double[] scores = LeverageScores.Scores(k, GramState.FromMatrix(d, sum, 40).Factor());
        double[] expected = LeverageScores.Compute(k, d);
        for (int j = 0; j < 40; j++)
        {
            Assert.True(Math.Abs(scores[j] - expected[j]) <= 1e-12, $"key {j}: {scores[j]} vs {expected[j]}");
        }
    }

    [Theory]
    [InlineData(3, "matrix", "length does not match")]
    [InlineData(0, "dimension", "")]
    public void A_gram_matrix_of_the_wrong_size_is_refused(int dimension, string parameter, string message)
    {
        var error = Assert.ThrowsAny<ArgumentException>(() => GramState.FromMatrix(dimension, new double[4], 1));
        Assert.Equal(parameter, error.ParamName);
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_asymmetric_or_non_finite_gram_matrix_is_refused_by_entry()
    {
        var asymmetric = Assert.Throws<ArgumentException>(() => GramState.FromMatrix(2, [1, 2, 3, 4], 2));
        Assert.Contains("not symmetric; got G[0, 1] = 2, G[1, 0] = 3", asymmetric.Message, StringComparison.Ordinal);
        var nan = Assert.Throws<ArgumentException>(() => GramState.FromMatrix(2, [1, 0, 0, double.NaN], 2));
        Assert.Contains("not finite; got G[1, 1] = NaN", nan.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => GramState.FromMatrix(2, [1, 0, 0, 1], -1));
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(3.0)]
    public void Lewis_steps_over_shards_with_summed_gram_matrices_give_the_lewis_weights(double p)
    {
        const int d = 4, n = 30, split = 11;
        float[] k = Data.Normal(n * d, 5);
        (double[] expected, int expectedRank) = LewisWeights.Compute(k, d, p);
        double[] w = new double[n], rowWeights = new double[n];
        Array.Fill(w, 1.0);
        int rank = 0;
        for (int step = 0; step < LewisWeights.MaxIterations; step++)
        {
            LewisWeights.GramWeights(w, p, rowWeights);
            GramState g = LeverageScores.Gram(k.AsSpan(0, split * d), d, 0, rowWeights.AsSpan(0, split));
            g.Merge(LeverageScores.Gram(k.AsSpan(split * d), d, 0, rowWeights.AsSpan(split)));
            GramFactor factor = g.Factor();
            rank = factor.Rank;
            double change = Math.Max(LewisWeights.Step(k.AsSpan(0, split * d), factor, p, w.AsSpan(0, split)), LewisWeights.Step(k.AsSpan(split * d), factor, p, w.AsSpan(split)));
            if (change < LewisWeights.ConvergenceTolerance)
            {
                break;
            }
        }

        Assert.Equal(expectedRank, rank);
        for (int j = 0; j < n; j++)
        {
            Assert.True(Math.Abs(w[j] - expected[j]) <= 1e-8, $"row {j}: {w[j]} vs {expected[j]}");
        }
    }

    [Fact]
    public void Lewis_step_refuses_mismatched_lengths_and_p()
    {
        float[] k = Data.Normal(12, 6);
        GramFactor factor = LeverageScores.Gram(k, 4).Factor();
        Assert.Equal("keys", Assert.Throws<ArgumentException>(() => LewisWeights.Step(k, factor, 3, new double[2])).ParamName);
        Assert.Equal("p", Assert.Throws<ArgumentOutOfRangeException>(() => LewisWeights.Step(k, factor, 4, new double[3])).ParamName);
        Assert.Equal("rowWeights", Assert.Throws<ArgumentException>(() => LewisWeights.GramWeights(new double[3], 3, new double[2])).ParamName);
    }

    [Fact]
    public void Lev_options_are_validated_with_the_compute_messages()
    {
        var options = new LevAttentionOptions { Eps = 0.1, Top = 3 };
        var direct = Assert.Throws<ArgumentException>(() => LevAttention.ValidateOptions(options));
        AttentionShape shape = AttentionShape.SingleHead(4, 2);
        var viaCompute = Assert.Throws<ArgumentException>(() => LevAttention.Compute(new float[8], new float[8], new float[8], shape, new float[8], options));
        Assert.Equal(viaCompute.Message, direct.Message);
        LevAttention.ValidateOptions(new LevAttentionOptions { Top = 3 });
    }
}
