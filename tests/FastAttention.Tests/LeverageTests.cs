using FastAttention.IO;
using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 6, deliverables 1-4 and 8: leverage scores, Lewis weights, universal sets, streaming.</summary>
public class LeverageTests
{
    /// <summary>Leverage scores by modified Gram–Schmidt in double with rank detection: an independent reference (row norms of Q_K).</summary>
    private static double[] ReferenceScores(float[] k, int d)
    {
        int n = k.Length / d;
        var basis = new List<double[]>();
        double scale = Math.Sqrt(Enumerable.Range(0, d).Max(c => Enumerable.Range(0, n).Sum(j => (double)k[(j * d) + c] * k[(j * d) + c])));
        for (int c = 0; c < d; c++)
        {
            double[] column = [.. Enumerable.Range(0, n).Select(j => (double)k[(j * d) + c])];
            for (int pass = 0; pass < 2; pass++)
            {
                foreach (double[] b in basis)
                {
                    double dot = column.Zip(b, (x, y) => x * y).Sum();
                    for (int j = 0; j < n; j++)
                    {
                        column[j] -= dot * b[j];
                    }
                }
            }

            double norm = Math.Sqrt(column.Sum(x => x * x));
            if (norm > 1e-9 * Math.Max(scale, 1e-300))
            {
                basis.Add([.. column.Select(x => x / norm)]);
            }
        }

        return [.. Enumerable.Range(0, n).Select(j => basis.Sum(b => b[j] * b[j]))];
    }

    private static float[] Columns(float[] k, int d, Func<float[], int, float> column, int newD)
    {
        int n = k.Length / d;
        var result = new float[n * newD];
        for (int j = 0; j < n; j++)
        {
            float[] row = k.AsSpan(j * d, d).ToArray();
            for (int c = 0; c < newD; c++)
            {
                result[(j * newD) + c] = column(row, c);
            }
        }

        return result;
    }

    public static TheoryData<string> Inputs() => ["gaussian", "duplicate-columns", "zero-column", "n-below-d", "duplicate-and-zero-rows", "ill-conditioned"];

    private static (float[] K, int D) Make(string kind)
    {
        const int d = 12;
        float[] k = Data.Normal(300 * d, 5);
        return kind switch
        {
            "duplicate-columns" => (Columns(k, d, (r, c) => r[c % 6], d), d),
            "zero-column" => (Columns(k, d, (r, c) => c == 3 ? 0f : r[c], d), d),
            "n-below-d" => (Data.Normal(7 * d, 6), d),
            "duplicate-and-zero-rows" => (DuplicateAndZeroRows(k, d), d),
            "ill-conditioned" => (Columns(k, d, (r, c) => r[c] * MathF.Pow(10, -c / 3f), d), d), // condition number ~10^3.7
            _ => (k, d),
        };
    }

    /// <summary>Row 10 repeats row 0; row 20 is zero.</summary>
    private static float[] DuplicateAndZeroRows(float[] k, int d)
    {
        float[] m = [.. k];
        m.AsSpan(0, d).CopyTo(m.AsSpan(d * 10, d));
        m.AsSpan(d * 20, d).Clear();
        return m;
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void Scores_lie_in_0_1_sum_to_rank_and_match_an_independent_qr(string kind)
    {
        (float[] k, int d) = Make(kind);
        double[] tau = LeverageScores.Compute(k, d);
        double[] reference = ReferenceScores(k, d);
        int rank = (int)Math.Round(reference.Sum());
        Assert.All(tau, t => Assert.InRange(t, 0, 1));
        Assert.Equal(rank, tau.Sum(), 1e-6);
        for (int j = 0; j < tau.Length; j++)
        {
            Assert.Equal(reference[j], tau[j], 1e-6);
        }

        if (kind == "duplicate-and-zero-rows")
        {
            Assert.Equal(tau[0], tau[10], 12);
            Assert.Equal(0, tau[20]);
        }

        if (kind == "n-below-d")
        {
            Assert.All(tau, t => Assert.Equal(1, t, 9)); // 7 independent rows in 12 dimensions
        }
    }

    [Fact]
    public void Scores_are_invariant_under_an_orthogonal_change_of_basis()
    {
        const int d = 8;
        float[] k = Data.Normal(400 * d, 7);

        // A random orthogonal matrix by Gram–Schmidt.
        double[][] basis = [.. Enumerable.Range(0, d).Select(i => Data.Normal(d, 100 + i).Select(x => (double)x).ToArray())];
        for (int i = 0; i < d; i++)
        {
            for (int j = 0; j < i; j++)
            {
                double dot = basis[i].Zip(basis[j], (x, y) => x * y).Sum();
                basis[i] = [.. basis[i].Zip(basis[j], (x, y) => x - (dot * y))];
            }

            double norm = Math.Sqrt(basis[i].Sum(x => x * x));
            basis[i] = [.. basis[i].Select(x => x / norm)];
        }

        float[] rotated = Columns(k, d, (r, c) => (float)Enumerable.Range(0, d).Sum(l => r[l] * basis[c][l]), d);
        double[] a = LeverageScores.Compute(k, d), b = LeverageScores.Compute(rotated, d);
        for (int j = 0; j < a.Length; j++)
        {
            Assert.Equal(a[j], b[j], 5e-6);
        }
    }

    [Theory]
    [InlineData(2.0)]
    [InlineData(1.0)]
    [InlineData(3.0)]
    [InlineData(0.5)]
    public void The_universal_set_holds_every_heavy_entry_for_adversarial_queries(double p)
    {
        const int d = 6, n = 400;
        float[] k = Data.Normal(n * d, 11);
        for (int j = 0; j < n; j += 37)
        {
            for (int l = 0; l < d; l++)
            {
                k[(j * d) + l] *= 6; // a few outlying keys
            }
        }

        double eps = p < 2 ? 0.01 : 0.05; // small p flattens the weights: fewer entries are heavy
        (int[] set, UniversalSetCertificate certificate) = UniversalSet.Compute(k, d, eps, p);
        Assert.True(certificate.Size <= certificate.SizeBound, $"|U| {certificate.Size} > bound {certificate.SizeBound}");
        Assert.Equal(set.Length, certificate.Size);

        // Q = K, random Q, and queries along the keys' principal directions (power iteration on G).
        GramState gram = LeverageScores.Gram(k, d);
        var principal = new List<float>();
        for (int t = 0; t < d; t++)
        {
            double[] x = [.. Data.Normal(d, 50 + t).Select(v => (double)v)];
            for (int it = 0; it < 50; it++)
            {
                x = [.. Enumerable.Range(0, d).Select(a => Enumerable.Range(0, d).Sum(b => gram.Matrix[(a * d) + b] * x[b]))];
                double norm = Math.Sqrt(x.Sum(v => v * v));
                x = [.. x.Select(v => v / norm)];
            }

            principal.AddRange(x.Select(v => (float)v));
        }

        int found = 0;
        foreach (float[] q in new[] { k, Data.Normal(300 * d, 12), [.. principal] })
        {
            (int heavy, List<(int Query, int Key, double Weight)> missing) = UniversalSet.Check(q, k, d, p, eps, set);
            found += heavy;
            Assert.Empty(missing);
        }

        Assert.True(found > 0, "no heavy entry to check");
    }

    [Fact]
    public void The_fast_finder_scanning_only_U_finds_exactly_the_brute_force_heavy_entries()
    {
        const int d = 5, n = 600;
        float[] k = Data.Normal(n * d, 21), q = Data.Normal(200 * d, 22);
        (int[] set, _) = UniversalSet.Compute(k, d, 0.02);
        GramState gram = LeverageScores.Gram(k, d);
        var fast = UniversalSet.HeavyEntries(q, k, gram, set, 0.02).Select(e => (e.Query, e.Key)).ToHashSet();
        var all = Enumerable.Range(0, n).ToArray();
        var brute = new HashSet<(int, int)>();
        for (int i = 0; i < 200; i++)
        {
            double[] f = [.. Enumerable.Range(0, n).Select(j => Math.Pow(Enumerable.Range(0, d).Sum(l => (double)q[(i * d) + l] * k[(j * d) + l]), 2))];
            double total = f.Sum();
            for (int j = 0; j < n; j++)
            {
                if (f[j] / total >= 0.02)
                {
                    brute.Add((i, j));
                }
            }
        }

        Assert.NotEmpty(brute);
        Assert.Equal(brute, fast);
    }

    [Fact]
    public void Lewis_weights_sum_to_rank_equal_leverage_at_p_2_and_are_a_fixed_point()
    {
        const int d = 6;
        float[] k = Data.Normal(500 * d, 31);
        (double[] w2, int rank) = LewisWeights.Compute(k, d, 2);
        Assert.Equal(d, rank);
        double[] tau = LeverageScores.Compute(k, d);
        for (int j = 0; j < tau.Length; j++)
        {
            Assert.Equal(tau[j], w2[j], 1e-9);
        }

        foreach (double p in new[] { 0.7, 1.0, 3.0, 3.5 })
        {
            (double[] w, _) = LewisWeights.Compute(k, d, p);
            Assert.Equal(d, w.Sum(), 1e-6);

            // Fixed point: w_j = (k_j^T (K^T W^(1-2/p) K)^-1 k_j)^(p/2).
            GramFactor factor = LeverageScores.Gram(k, d, 0, [.. w.Select(x => Math.Pow(x, 1 - (2 / p)))]).Factor();
            for (int j = 0; j < 50; j++)
            {
                Assert.Equal(w[j], Math.Pow(factor.Score(k.AsSpan(j * d, d)), p / 2), 1e-6);
            }
        }
    }

    [Theory]
    [InlineData(0.2)]
    [InlineData(3.9)]
    public void Lewis_weights_converge_near_the_ends_of_the_supported_range(double p)
    {
        const int d = 4;
        float[] k = Data.Normal(300 * d, 33);
        (double[] w, int rank) = LewisWeights.Compute(k, d, p);
        Assert.Equal(d, rank);
        Assert.Equal(d, w.Sum(), 1e-6);
    }

    [Fact]
    public void The_heavy_entry_finder_rejects_indices_outside_the_keys()
    {
        float[] k = Data.Normal(40, 1);
        GramState gram = LeverageScores.Gram(k, 4);
        Assert.Throws<ArgumentException>(() => UniversalSet.HeavyEntries(k, k, gram, [0, 10], 0.1));
    }

    [Fact]
    public void Streaming_one_pass_and_two_pass_agree_with_offline_and_shards_merge()
    {
        const int d = 8, n = 9000;
        float[] k = Data.Normal(n * d, 41);
        for (int j = 0; j < n; j += 301)
        {
            k[j * d] *= 12;
        }

        double eps = 0.01;
        (int[] offline, UniversalSetCertificate certificate) = UniversalSet.Compute(k, d, eps);
        double[] tau = LeverageScores.Compute(k, d);

        var stream = new LeverageStream(d, eps);
        for (int start = 0; start < n; start += 1000)
        {
            stream.Append(k.AsSpan(start * d, Math.Min(1000, n - start) * d));
        }

        (long[] streamed, double[] scores, UniversalSetCertificate streamCertificate) = stream.Finish();
        Assert.Equal(offline.Select(j => (long)j), streamed);
        Assert.Equal(certificate.Rank, streamCertificate.Rank);
        for (int x = 0; x < streamed.Length; x++)
        {
            Assert.Equal(tau[streamed[x]], scores[x], 1e-9);
        }

        Assert.True(stream.CandidateCount < n / 4, $"{stream.CandidateCount} candidates kept of {n}");

        IEnumerable<float[]> Chunks() => Enumerable.Range(0, 9).Select(c => k.AsSpan(c * 1000 * d, 1000 * d).ToArray());
        (long[] twoPass, _, _) = LeverageStream.TwoPass(Chunks, d, eps);
        Assert.Equal(streamed, twoPass);

        // Shards: Gram states of two halves merged = the whole.
        GramState left = LeverageScores.Gram(k.AsSpan(0, 4000 * d), d), right = LeverageScores.Gram(k.AsSpan(4000 * d), d);
        left.Merge(right);
        GramState whole = LeverageScores.Gram(k, d);
        for (int i = 0; i < d * d; i++)
        {
            Assert.Equal(whole.Matrix[i], left.Matrix[i], Math.Abs(whole.Matrix[i]) * 1e-12);
        }
    }

    [Fact]
    public void Fast_and_sketched_scores_are_within_their_documented_accuracy()
    {
        const int d = 16, n = 20000;
        float[] k = Data.Normal(n * d, 51);
        double[] exact = LeverageScores.Compute(k, d);
        double[] fast = LeverageScores.Compute(k, d, LeverageMethod.Fast);
        Assert.True(exact.Zip(fast, (a, b) => Math.Abs(a - b) / a).Max() < 1e-3);
        double[] sketched = LeverageScores.Compute(k, d, LeverageMethod.Sketched, seed: 3);
        double[] ratio = [.. exact.Zip(sketched, (a, b) => b / a)];
        Assert.InRange(ratio.Min(), 0.25, 1);
        Assert.InRange(ratio.Max(), 1, 2.5);
        Assert.InRange(ratio.Average(), 0.9, 1.1);
        Assert.Equal(sketched, LeverageScores.Compute(k, d, LeverageMethod.Sketched, seed: 3, maxDegreeOfParallelism: 1));
    }

    [Fact]
    public void Leverage_on_real_glove_keys_sums_to_100_and_bounds_every_heavy_entry()
    {
        float[] glove = NumpyFile.ReadFloat32(Data.Fixture("glove", "glove100_top2k.npy")).Data;
        double[] tau = LeverageScores.Compute(glove, 100);
        Assert.Equal(100, tau.Sum(), 1e-6);
        (int[] set, _) = UniversalSet.Compute(glove, 100, 0.005);
        (int heavy, var missing) = UniversalSet.Check(glove.AsSpan(0, 300 * 100), glove, 100, 2, 0.005, set);
        Assert.True(heavy > 0);
        Assert.Empty(missing);
    }

    [Theory]
    [InlineData(0.0, 2.0)]
    [InlineData(1.5, 2.0)]
    [InlineData(-0.1, 2.0)]
    [InlineData(0.1, 0.0)]
    [InlineData(0.1, -1.0)]
    [InlineData(0.1, 4.0)]
    public void Bad_eps_or_p_is_a_clear_error(double eps, double p)
    {
        float[] k = Data.Normal(40, 1);
        var ex = Assert.ThrowsAny<ArgumentOutOfRangeException>(() => UniversalSet.Compute(k, 4, eps, p));
        Assert.Matches(eps is <= 0 or > 1 ? "eps" : "p", ex.ParamName!);
    }
}

/// <summary>Defect: an all-zero key left the previous call's online score in <see cref="FastAttention.Leverage.LeverageStream.LastOnlineScores"/>.</summary>
public class ZeroKeyTests
{
    [Fact]
    public void An_all_zero_key_has_online_score_zero_not_the_previous_keys()
    {
        var stream = new FastAttention.Leverage.LeverageStream(2, 0.5);
        stream.Append([1f, 0f]);
        Assert.Equal(1.0, stream.LastOnlineScores[0]);
        stream.Append([0f, 0f]);
        Assert.Equal(0.0, stream.LastOnlineScores[0]);
        Assert.Equal(1, stream.CandidateCount);
    }

    [Fact]
    public void LevKvCache_in_top_k_mode_does_not_evict_a_real_key_for_an_all_zero_key()
    {
        // Top 1 keeps a pool of 4: online scores 1, 1/2, 1/3 (the same direction) and 1 (a new one) fill it.
        var cache = new LevKvCache(2, 1, new LevAttentionOptions { Top = 1 });
        cache.Append([1f, 0f], [1f]);
        cache.Append([1f, 0f], [2f]);
        cache.Append([1f, 0f], [3f]);
        cache.Append([0f, 1f], [4f]);
        Assert.Equal([0L, 1, 2, 3], cache.CandidateIndices);

        // The zero key scores 0: it must not displace key 2 (which the stale score 1 of key 3 did).
        cache.Append([0f, 0f], [5f]);
        Assert.Equal([0L, 1, 2, 3], cache.CandidateIndices);
    }
}
