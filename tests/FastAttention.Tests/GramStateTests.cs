using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>The public leverage state: merging the states of two halves of a key stream is the state of the whole.</summary>
public class GramStateTests
{
    [Theory]
    [InlineData(100, 8, 37)]
    [InlineData(513, 16, 256)]
    [InlineData(9, 3, 1)]
    public void Merging_the_states_of_two_halves_gives_the_leverage_scores_of_the_whole(int n, int d, int split)
    {
        float[] keys = Data.Normal((long)n * d, n + d);
        GramState first = LeverageScores.Gram(keys.AsSpan(0, split * d), d);
        var second = new GramState(d);
        second.Add(keys.AsSpan(split * d));
        first.Merge(second);
        Assert.Equal(n, first.Rows);

        GramState whole = LeverageScores.Gram(keys, d);
        for (int x = 0; x < d * d; x++)
        {
            Assert.Equal(whole.Matrix[x], first.Matrix[x], 1e-9 * (1 + Math.Abs(whole.Matrix[x])));
        }

        double[] merged = LeverageScores.Scores(keys, first.Factor());
        double[] exact = LeverageScores.Compute(keys, d);
        for (int j = 0; j < n; j++)
        {
            Assert.Equal(exact[j], merged[j], 1e-9);
        }
    }

    [Fact]
    public void A_state_of_another_dimension_does_not_merge() =>
        Assert.Throws<ArgumentException>(() => new GramState(3).Merge(new GramState(4)));
}
