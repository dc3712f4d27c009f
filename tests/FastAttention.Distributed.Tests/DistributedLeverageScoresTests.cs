using FastAttention.Distributed.Worker;
using FastAttention.Leverage;

namespace FastAttention.Distributed.Tests;

public class DistributedLeverageScoresTests
{
    /// <summary>Sharded leverage scores against one process's: 1e-12 absolute (the Gram sum over ranks is re-associated).</summary>
    [Theory]
    [InlineData(1, 29)]
    [InlineData(2, 29)]
    [InlineData(3, 2)]
    [InlineData(4, 3)]
    public void Sharded_scores_and_gram_match_one_process(int ranks, int n)
    {
        const int d = 5;
        float[] k = ShardSlices.Normal(n * d, 90 + n);
        double[] expected = LeverageScores.Compute(k, d);
        GramState whole = LeverageScores.Gram(k, d);
        var results = LocalCommunicator.Run(ranks, comm =>
        {
            var shard = SequenceShard.For(n, comm.Rank, comm.Size, ShardLayout.ZigZag);
            float[] local = ShardSlices.Take(k, shard, d);
            GramState gram = DistributedLeverageScores.Gram(comm, local, d);
            (double[] scores, int rank) = DistributedLeverageScores.Compute(comm, local, d);
            return (gram, scores, rank, shard);
        });
        foreach (var (gram, scores, rank, shard) in results)
        {
            Assert.Equal(n, gram.Rows);
            Assert.Equal(whole.Factor().Rank, rank);
            for (int i = 0; i < d * d; i++)
            {
                Assert.True(Math.Abs(gram.Matrix[i] - whole.Matrix[i]) <= 1e-12 * (1 + Math.Abs(whole.Matrix[i])), $"G[{i}]");
            }

            for (int t = 0; t < scores.Length; t++)
            {
                Assert.True(Math.Abs(scores[t] - expected[shard.GlobalPosition(t)]) <= 1e-12, $"key {shard.GlobalPosition(t)}: {scores[t]} vs {expected[shard.GlobalPosition(t)]}");
            }
        }
    }

    [Fact]
    public void Select_of_one_head_gives_the_universal_set_and_certificate_of_one_process()
    {
        const int d = 4, n = 40;
        float[] k = ShardSlices.Normal(n * d, 5);
        (int[] indices, UniversalSetCertificate certificate) = UniversalSet.Compute(k, d, 0.15);
        Assert.DoesNotContain(LeverageScores.Compute(k, d), x => Math.Abs(x - 0.15) < 1e-7); // no score within rounding of the threshold
        var results = LocalCommunicator.Run(3, comm =>
        {
            var shard = SequenceShard.For(n, comm.Rank, comm.Size, ShardLayout.Contiguous);
            return DistributedLevAttention.Select(comm, ShardSlices.Take(k, shard, d), shard, d, new LevAttentionOptions { Eps = 0.15 });
        });
        foreach (var (keys, got, bounds) in results)
        {
            Assert.Equal(indices, keys);
            Assert.Equal((certificate.Size, certificate.SizeBound, certificate.Rank), (got!.Size, got.SizeBound, got.Rank));
        }

        Assert.Equal(n, results.Sum(r => r.LocalBounds.Length));
    }

    [Fact]
    public void Select_with_a_shard_of_another_rank_stops_every_rank()
    {
        var errors = LocalCommunicator.Run(2, comm => Record.Exception(() =>
            DistributedLevAttention.Select(comm, new float[8], SequenceShard.For(4, 0, 2, ShardLayout.Contiguous), 4, new LevAttentionOptions { Top = 1 })));
        Assert.All(errors, e => Assert.StartsWith("rank 1 of 2: keyShard: the shard is rank 0 of 2 over 4 tokens; expected rank 1 of 2", Assert.IsType<DistributedException>(e).Message, StringComparison.Ordinal));
    }
}
