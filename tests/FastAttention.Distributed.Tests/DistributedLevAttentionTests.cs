using FastAttention.Distributed.Tests.Support;
using FastAttention.Distributed.Worker;
using FastAttention.Leverage;

namespace FastAttention.Distributed.Tests;

public class DistributedLevAttentionTests
{
    /// <summary>
    /// Scores: the Gram sum over ranks is re-associated, so a score may move by a few ulps of the pivoted Cholesky's
    /// condition; 1e-10 absolute for leverage scores, 1e-8 for Lewis weights (their iteration stops at a relative change of
    /// 1e-10, and the distributed run may stop one step apart).
    /// </summary>
    private const double ScoreTolerance = 1e-10, LewisTolerance = 1e-8;

    /// <summary>
    /// Output: the kept set and its order are the one-process ones, so only the attention kernel's own float32 rounding over
    /// a different query count can differ; 1e-5 absolute on outputs of magnitude about 1.
    /// </summary>
    private const float OutputTolerance = 1e-5f;

    public static TheoryData<int, string> Cases()
    {
        var data = new TheoryData<int, string>();
        foreach (int p in new[] { 1, 2, 3, 4 })
        {
            foreach (string c in new[] { "gqa-top", "few-keys-eps", "one-key", "zigzag-lewis-kept", "batch-power-top" })
            {
                data.Add(p, c);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Sharded_selection_and_output_match_one_process(int ranks, string name)
    {
        (AttentionShape shape, LevAttentionOptions options, ShardLayout layout) = Case(name);
        (float[] q, float[] k, float[] v) = Inputs(shape, 40 + name.Length);
        float[] expected = new float[shape.OutputLength];
        IReadOnlyList<LevSelection> single = LevAttention.Compute(q, k, v, shape, expected, options);
        RequireNoNearTies(k, shape, options);

        var results = LocalCommunicator.Run(ranks, comm => RunShard(comm, q, k, v, shape, options, layout));
        float[] output = new float[shape.OutputLength];
        foreach (var (selections, local, queryShard, keyShard) in results)
        {
            ShardSlices.Place(local, queryShard, shape.ValueDim, output);
            Assert.Equal(single.Count, selections.Count);
            for (int x = 0; x < single.Count; x++)
            {
                LevSelection got = selections[x].Selection, want = single[x];
                Assert.Equal((want.Batch, want.KvHead), (got.Batch, got.KvHead));
                Assert.Equal(want.Keys, got.Keys);
                CheckCertificate(want.Certificate, got.Certificate);
                CheckBounds(k, shape, options, want, keyShard, selections[x].LocalBounds);
            }
        }

        for (int i = 0; i < output.Length; i++)
        {
            Assert.True(Math.Abs(output[i] - expected[i]) <= OutputTolerance, $"output {i}: {output[i]} vs one process {expected[i]}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Exact_ties_go_to_the_lower_global_index_whatever_the_storage_order(bool reversed)
    {
        // Four distinct keys, each three times (rows g, g + 4, g + 8): equal rows score the same bits, so the top 4 takes a
        // whole group and the lowest-index row of the next, which only the tie rule decides.
        const int d = 3, n = 12;
        float[] distinct = ShardSlices.Normal(4 * d, 17);
        float[] k = [.. Enumerable.Range(0, n).SelectMany(j => distinct.AsSpan((j % 4) * d, d).ToArray())];
        float[] v = ShardSlices.Normal(n * d, 18), q = ShardSlices.Normal(5 * d, 19);
        var shape = new AttentionShape(1, 1, 5, n, d, d);
        var options = new LevAttentionOptions { Top = 4 };
        IReadOnlyList<LevSelection> single = LevAttention.Compute(q, k, v, shape, new float[shape.OutputLength], options);
        var results = LocalCommunicator.Run(2, comm =>
        {
            int r = comm.Rank;
            var keyShard = reversed ? new SequenceShard(r, 2, n, ShardLayout.Contiguous, [((6 * r) + 3, 3), (6 * r, 3)]) : SequenceShard.For(n, r, 2, ShardLayout.Contiguous);
            var queryShard = SequenceShard.For(5, r, 2, ShardLayout.Contiguous);
            return DistributedLevAttention.Compute(comm, ShardSlices.Take(q, queryShard, d), ShardSlices.Take(k, keyShard, d), ShardSlices.Take(v, keyShard, d), shape, queryShard, keyShard,
                new float[queryShard.Count * d], options)[0].Selection.Keys;
        });
        Assert.Equal(2, single[0].Keys.Select(j => j % 4).Distinct().Count()); // a whole group and one of a tied group
        Assert.Single(single[0].Keys.GroupBy(j => j % 4), g => g.Count() == 1 && g.Single() < 4);
        Assert.All(results, keys => Assert.Equal(single[0].Keys, keys));
    }

    [Fact]
    public void Bad_options_are_refused_on_every_rank_before_any_message()
    {
        AttentionShape shape = new(1, 1, 5, 5, 4, 4);
        (float[] q, float[] k, float[] v) = Inputs(shape, 1);
        var errors = LocalCommunicator.Run(3, comm => Record.Exception(() =>
            RunShard(comm, q, k, v, shape, new LevAttentionOptions { Eps = 0.1, Top = 2 }, ShardLayout.Contiguous)));
        Assert.All(errors, e => Assert.Equal("options", Assert.IsType<ArgumentException>(e).ParamName));
        Assert.All(errors, e => Assert.Contains("Set exactly one of Eps", e!.Message, StringComparison.Ordinal));
    }

    [Fact]
    public void One_rank_with_a_short_key_shard_stops_every_rank_with_its_message()
    {
        AttentionShape shape = new(1, 1, 6, 6, 4, 4);
        (float[] q, float[] k, float[] v) = Inputs(shape, 2);
        var errors = LocalCommunicator.Run(3, comm => Record.Exception(() =>
        {
            var qs = SequenceShard.For(6, comm.Rank, 3, ShardLayout.Contiguous);
            var ks = SequenceShard.For(6, comm.Rank, 3, ShardLayout.Contiguous);
            float[] key = ShardSlices.Take(k, ks, 4);
            key = comm.Rank == 1 ? key[..^1] : key;
            DistributedLevAttention.Compute(comm, ShardSlices.Take(q, qs, 4), key, ShardSlices.Take(v, ks, 4), shape, qs, ks, new float[qs.Count * 4], new LevAttentionOptions { Top = 2 });
        }));
        Assert.All(errors, e => Assert.StartsWith("rank 1 of 3: key: length does not match the shard; got 7 elements, expected 8", Assert.IsType<DistributedException>(e).Message, StringComparison.Ordinal));
    }

    [Fact]
    public void A_non_finite_key_on_one_rank_stops_every_rank()
    {
        AttentionShape shape = new(1, 1, 8, 8, 4, 4);
        (float[] q, float[] k, float[] v) = Inputs(shape, 3);
        k[(7 * 4) + 2] = float.NaN; // the last key: held by the last rank
        var errors = LocalCommunicator.Run(2, comm => Record.Exception(() => RunShard(comm, q, k, v, shape, new LevAttentionOptions { Top = 2 }, ShardLayout.Contiguous)));
        Assert.All(errors, e => Assert.StartsWith("rank 1 of 2: ", Assert.IsType<DistributedException>(e).Message, StringComparison.Ordinal));
    }

    /// <summary>
    /// A NaN query on one rank, with several heads (a collective per head follows the attention of the first): before the
    /// collective check only that rank threw, between two heads' collectives, and the others waited for the timeout.
    /// </summary>
    [Fact]
    public void A_non_finite_query_on_one_rank_stops_every_rank_with_several_heads()
    {
        AttentionShape shape = new(2, 2, 8, 8, 4, 4);
        (float[] q, float[] k, float[] v) = Inputs(shape, 4);
        q[(8 * 4) + 1] = float.NaN; // batch 0, head 1, query 0: held by rank 0
        var errors = LocalCommunicator.Run(2, comm => Record.Exception(() => RunShard(comm, q, k, v, shape, new LevAttentionOptions { Top = 2 }, ShardLayout.Contiguous)),
            TimeSpan.FromSeconds(20));
        Assert.All(errors, e => Assert.StartsWith("rank 0 of 2: ", Assert.IsType<DistributedException>(e).Message, StringComparison.Ordinal));
        Assert.Equal(errors[0]!.Message, errors[1]!.Message);
    }

    [Fact]
    public void A_rank_with_other_options_stops_every_rank_naming_the_difference()
    {
        AttentionShape shape = new(1, 1, 8, 8, 4, 4);
        (float[] q, float[] k, float[] v) = Inputs(shape, 5);
        var errors = LocalCommunicator.Run(3, comm => Record.Exception(() =>
            RunShard(comm, q, k, v, shape, new LevAttentionOptions { Top = comm.Rank == 2 ? 3 : 2 }, ShardLayout.Contiguous)), TimeSpan.FromSeconds(20));
        Assert.All(errors, e => Assert.StartsWith("rank 2 of 3: ", Assert.IsType<DistributedException>(e).Message, StringComparison.Ordinal));
        Assert.All(errors, e => Assert.Contains("same global shape and options", e!.Message, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Mpi_sharded_levattention_matches_one_process(int ranks)
    {
        var result = MpiJob.Worker(ranks, "lev");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(ranks, result.RankLines.Count(l => l.Contains(": ok lev ", StringComparison.Ordinal)));
    }

    internal static (AttentionShape Shape, LevAttentionOptions Options, ShardLayout Layout) Case(string name) => name switch
    {
        "gqa-top" => (new AttentionShape(1, 4, 29, 37, 8, 5, KeyValueHeadCount: 2), new LevAttentionOptions { Top = 5 }, ShardLayout.Contiguous),
        "few-keys-eps" => (new AttentionShape(1, 2, 2, 3, 8, 4), new LevAttentionOptions { Eps = 0.3 }, ShardLayout.Contiguous),
        "one-key" => (new AttentionShape(1, 1, 1, 1, 6, 3), new LevAttentionOptions { Top = 1 }, ShardLayout.Contiguous),
        "zigzag-lewis-kept" => (new AttentionShape(1, 2, 50, 50, 6, 4), new LevAttentionOptions { Eps = 0.15, Power = 3, KeepFirst = 2, KeepLast = 1 }, ShardLayout.ZigZag),
        "batch-power-top" => (new AttentionShape(2, 2, 13, 41, 5, 7, KeyValueHeadCount: 1), new LevAttentionOptions { Top = 7, Power = 1.5 }, ShardLayout.ZigZag),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown case"),
    };

    internal static (float[] Q, float[] K, float[] V) Inputs(AttentionShape shape, int seed) =>
        (ShardSlices.Normal(shape.QueryLength, seed), ShardSlices.Normal(shape.KeyLength, seed + 1), ShardSlices.Normal(shape.ValueLength, seed + 2));

    private static (IReadOnlyList<DistributedLevSelection> Selections, float[] Output, SequenceShard QueryShard, SequenceShard KeyShard) RunShard(
        Communicator comm, float[] q, float[] k, float[] v, AttentionShape shape, LevAttentionOptions options, ShardLayout layout)
    {
        var queryShard = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, layout);
        var keyShard = SequenceShard.For(shape.KeyCount, comm.Rank, comm.Size, layout);
        float[] output = new float[(long)shape.BatchSize * shape.HeadCount * queryShard.Count * shape.ValueDim];
        var selections = DistributedLevAttention.Compute(comm, ShardSlices.Take(q, queryShard, shape.HeadDim), ShardSlices.Take(k, keyShard, shape.HeadDim),
            ShardSlices.Take(v, keyShard, shape.ValueDim), shape, queryShard, keyShard, output, options);
        return (selections, output, queryShard, keyShard);
    }

    /// <summary>The one-process bounds of one head's keys.</summary>
    private static double[] SingleBounds(float[] k, AttentionShape shape, LevAttentionOptions options, LevSelection head)
    {
        int n = shape.KeyCount, d = shape.HeadDim;
        long kv = ((long)head.Batch * shape.EffectiveKeyValueHeads) + head.KvHead;
        return UniversalSet.SensitivityBounds(k.AsSpan((int)(kv * n * d), n * d), d, options.Power > 0 ? options.Power : 2).Bounds;
    }

    private static void CheckBounds(float[] k, AttentionShape shape, LevAttentionOptions options, LevSelection head, SequenceShard keyShard, double[] local)
    {
        double[] single = SingleBounds(k, shape, options, head);
        Assert.Equal(keyShard.Count, local.Length);
        double tolerance = options.Power is > 0 and not 2 ? LewisTolerance : ScoreTolerance;
        for (int t = 0; t < local.Length; t++)
        {
            double want = single[keyShard.GlobalPosition(t)];
            Assert.True(Math.Abs(local[t] - want) <= tolerance, $"bound of key {keyShard.GlobalPosition(t)}: {local[t]} vs one process {want}");
        }
    }

    private static void CheckCertificate(UniversalSetCertificate? want, UniversalSetCertificate? got)
    {
        Assert.Equal(want is null, got is null);
        if (want is not null && got is not null)
        {
            Assert.Equal((want.Eps, want.P, want.Size, want.SizeBound, want.Rank), (got.Eps, got.P, got.Size, got.SizeBound, got.Rank));
            Assert.True(Math.Abs(want.ScoreSum - got.ScoreSum) <= 1e-8, $"score sum {got.ScoreSum} vs {want.ScoreSum}");
        }
    }

    /// <summary>
    /// The data must not put a score within rounding of the decision: no bound within 1e-7 of eps, and the k-th and
    /// (k+1)-th largest bounds at least 1e-7 apart, so a re-associated Gram sum cannot flip the set.
    /// </summary>
    private static void RequireNoNearTies(float[] k, AttentionShape shape, LevAttentionOptions options)
    {
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < shape.EffectiveKeyValueHeads; hk++)
            {
                double[] bounds = SingleBounds(k, shape, options, new LevSelection(b, hk, [], null));
                if (options.Eps is double eps)
                {
                    Assert.DoesNotContain(bounds, x => Math.Abs(x - eps) < 1e-7);
                }
                else if (options.Top < bounds.Length)
                {
                    double[] sorted = [.. bounds.OrderDescending()];
                    Assert.True(sorted[options.Top.Value - 1] - sorted[options.Top.Value] >= 1e-7, "the test data has a near tie at the k-th score");
                }
            }
        }
    }
}
