using FastAttention.Training;

namespace FastAttention.Torch.Tests;

/// <summary>The Match3 / Match2 generator and labellers (no TorchSharp needed): exact labels, the convention, balance, determinism.</summary>
public sealed class MatchDataTests
{
    public static TheoryData<MatchKind, int, bool, int?> Tasks() => new()
    {
        { MatchKind.Match3, 1, false, null },
        { MatchKind.Match3, 2, false, null },
        { MatchKind.Match3, 7, false, null },
        { MatchKind.Match3, 24, false, null },
        { MatchKind.Match3, 33, true, null },
        { MatchKind.Match3, 40, true, 8 },
        { MatchKind.Match2, 1, false, null },
        { MatchKind.Match2, 13, false, null },
        { MatchKind.Match2, 31, true, 4 },
    };

    [Theory]
    [MemberData(nameof(Tasks))]
    public void Fast_labels_equal_brute_force_on_generated_and_uniform_sequences(MatchKind kind, int n, bool causal, int? span)
    {
        foreach (int m in new[] { MatchTask.MinimumModulus(kind, n), MatchTask.DefaultModulus(kind, n), 3 * MatchTask.MinimumModulus(kind, n) + 1 })
        {
            var task = new MatchTask(kind, n, Math.Max(m, 2), causal, span);
            var (values, labels) = MatchData.Batch(task, seed: 11, first: 0, count: 40);
            var random = new Random(5);
            for (int s = 0; s < 40; s++)
            {
                var x = values.AsSpan(s * n, n);
                Assert.Equal(MatchData.BruteForceLabels(task, x), labels.AsSpan(s * n, n).ToArray());
                Assert.All(x.ToArray(), v => Assert.InRange(v, 0, task.Modulus - 1));
                // Uniform sequences have many accidental matches: the labellers must agree there too.
                int[] uniform = [.. Enumerable.Range(0, n).Select(_ => random.Next(task.Modulus))];
                var fast = new bool[n];
                MatchData.Label(task, uniform, fast);
                Assert.Equal(MatchData.BruteForceLabels(task, uniform), fast);
            }
        }
    }

    [Fact]
    public void The_convention_counts_j1_equal_j2_and_i_itself_as_witnesses()
    {
        var task = new MatchTask(MatchKind.Match3, 3, 101);
        // x_0 + 2 x_1 = 10 + 2 * 50 = 110 = 9; no. Use x_0 + 2 x_1 = 101: x_0 = 1, x_1 = 50 (j1 = j2 = 1).
        Assert.Equal([true, true, false], MatchData.BruteForceLabels(task, [1, 50, 7]));
        // 3 x_i = 0 mod M only for x_i = 0 (M prime, not 3): i = j1 = j2.
        Assert.Equal([true, false], MatchData.BruteForceLabels(task with { Length = 2 }, [0, 5]));
        // 2 x_i + x_j: i = j1, j2 = j.
        Assert.Equal([true, true], MatchData.BruteForceLabels(task with { Length = 2 }, [3, 95]));
        // Causal: a witness after i does not count.
        var causal = task with { Causal = true };
        Assert.Equal([false, true, false], MatchData.BruteForceLabels(causal, [1, 50, 7]));
        // Match2: x_i + x_j = 0, j = i allowed (2 x_i = 0 only for 0).
        var two = new MatchTask(MatchKind.Match2, 3, 101);
        Assert.Equal([true, false, true], MatchData.BruteForceLabels(two, [30, 4, 71]));
        Assert.Equal([true, false, false], MatchData.BruteForceLabels(two, [0, 4, 8]));
    }

    [Theory]
    [InlineData(MatchKind.Match3, 16, false)]
    [InlineData(MatchKind.Match3, 32, false)]
    [InlineData(MatchKind.Match3, 64, true)]
    [InlineData(MatchKind.Match2, 32, false)]
    [InlineData(MatchKind.Match2, 32, true)]
    public void Labels_are_balanced_by_construction(MatchKind kind, int n, bool causal)
    {
        var task = new MatchTask(kind, n, MatchTask.DefaultModulus(kind, n), causal);
        var (_, labels) = MatchData.Batch(task, seed: 2, first: 0, count: 300);
        double positive = labels.Count(l => l) / (double)labels.Length;
        Assert.InRange(positive, 0.45, 0.55);
        // A uniform draw at this modulus is far from balanced, so the balance is the generator's doing.
        var random = new Random(1);
        var uniform = new bool[n];
        int hits = 0;
        for (int s = 0; s < 300; s++)
        {
            MatchData.Label(task, [.. Enumerable.Range(0, n).Select(_ => random.Next(task.Modulus))], uniform);
            hits += uniform.Count(l => l);
        }

        Assert.True(hits / (300.0 * n) < 0.4, $"uniform sequences gave {hits / (300.0 * n):P1} positives");
    }

    [Theory]
    [InlineData(40, 8, 8)]
    [InlineData(64, 16, 8)]
    [InlineData(33, 5, 2)]
    public void Every_causal_positive_has_a_witness_pair_inside_windows_of_the_spans(int n, int span, int span2)
    {
        // The windowed model sees j1 in (i - w1, i] and j2 in (i - w2, i]: with (w1, w2) = (span, span2) it must see a witness of every positive.
        var task = new MatchTask(MatchKind.Match3, n, MatchTask.DefaultModulus(MatchKind.Match3, n), Causal: true, Span: span, Span2: span2);
        var (values, labels) = MatchData.Batch(task, seed: 6, first: 0, count: 100);
        int positives = 0;
        for (int s = 0; s < 100; s++)
        {
            for (int i = 0; i < n; i++)
            {
                if (!labels[(s * n) + i])
                {
                    continue;
                }

                positives++;
                bool seen = false;
                for (int j1 = Math.Max(0, i - span + 1); j1 <= i && !seen; j1++)
                {
                    for (int j2 = Math.Max(0, i - span2 + 1); j2 <= i && !seen; j2++)
                    {
                        seen = ((long)values[(s * n) + i] + values[(s * n) + j1] + values[(s * n) + j2]) % task.Modulus == 0;
                    }
                }

                Assert.True(seen, $"sequence {s}, position {i}: positive with no witness inside windows ({span}, {span2})");
            }
        }

        Assert.InRange(positives / (100.0 * n), 0.4, 0.55);
    }

    [Fact]
    public void The_same_seed_and_index_give_the_same_sequence_and_other_seeds_differ()
    {
        var task = new MatchTask(MatchKind.Match3, 20, MatchTask.DefaultModulus(MatchKind.Match3, 20));
        var a = MatchData.Batch(task, 7, 100, 5);
        var b = MatchData.Batch(task, 7, 100, 5);
        Assert.Equal(a.Values, b.Values);
        Assert.Equal(a.Labels, b.Labels);
        // Index 102 of a batch starting at 100 is the third sequence of it.
        Assert.Equal(a.Values.AsSpan(2 * 20, 20).ToArray(), MatchData.Batch(task, 7, 102, 1).Values);
        Assert.NotEqual(a.Values, MatchData.Batch(task, 8, 100, 5).Values);
    }

    [Fact]
    public void Bad_tasks_and_values_are_named_errors()
    {
        var small = new MatchTask(MatchKind.Match3, 32, 100);
        var e = Assert.Throws<ArgumentException>(small.Validate);
        Assert.Contains("M = 100 is too small", e.Message);
        Assert.Contains($"M >= {MatchTask.MinimumModulus(MatchKind.Match3, 32)}", e.Message);
        Assert.Throws<ArgumentException>(() => new MatchTask(MatchKind.Match3, 0, 101).Validate());
        Assert.Contains("larger than", Assert.Throws<ArgumentException>(() => new MatchTask(MatchKind.Match3, 8, int.MaxValue).Validate()).Message);
        Assert.Throws<ArgumentException>(() => new MatchTask(MatchKind.Match3, MatchTask.MaxLength + 1, MatchTask.MaxModulus).Validate());
        Assert.Throws<ArgumentException>(() => new MatchTask(MatchKind.Match3, 4, 101, Span: 2).Validate());
        var task = new MatchTask(MatchKind.Match3, 3, 101);
        Assert.Contains("position 1", Assert.Throws<ArgumentException>(() => MatchData.BruteForceLabels(task, [1, 101, 3])).Message);
        Assert.Throws<ArgumentException>(() => MatchData.Label(task, [1, -1, 3], new bool[3]));
        Assert.Throws<ArgumentException>(() => MatchData.Sample(task, 0, 0, new int[4]));
    }

    [Fact]
    public void The_minimum_modulus_always_leaves_a_negative_value()
    {
        // At the bound every negative still finds a value: generation at M = minimum never throws, over many seeds.
        foreach (var kind in new[] { MatchKind.Match3, MatchKind.Match2 })
        {
            foreach (int n in new[] { 3, 8, 20 })
            {
                var task = new MatchTask(kind, n, MatchTask.MinimumModulus(kind, n));
                var (values, labels) = MatchData.Batch(task, 3, 0, 200);
                Assert.Equal(200 * n, values.Length);
                Assert.Contains(false, labels);
            }
        }
    }
}
