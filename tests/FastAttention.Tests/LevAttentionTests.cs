using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 6, deliverable 5: the LevAttention mechanism and the KV-cache policy.</summary>
public class LevAttentionTests
{
    [Fact]
    public void Keeping_every_key_is_exact_attention()
    {
        var shape = new AttentionShape(2, 4, 30, 50, 8, 5, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 3);
        var lev = new float[shape.OutputLength];
        var exact = new float[shape.OutputLength];
        IReadOnlyList<LevSelection> selections = LevAttention.Compute(q, k, v, shape, lev, new LevAttentionOptions { Top = 50 });
        ExactAttention.Compute(q, k, v, shape, exact);
        Assert.Equal(4, selections.Count);
        Assert.All(selections, s => Assert.Equal(50, s.Keys.Length));
        Assert.Equal(exact, lev);
    }

    [Fact]
    public void Power_attention_over_the_universal_set_keeps_every_heavy_entry_and_the_always_kept_keys()
    {
        const int d = 6, n = 500;
        var shape = new AttentionShape(1, 1, 200, n, d, 3);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 9);
        var output = new float[shape.OutputLength];
        var options = new LevAttentionOptions { Eps = 0.02, Power = 2, KeepFirst = 3, KeepLast = 4 };
        LevSelection selection = LevAttention.Compute(q, k, v, shape, output, options).Single();
        Assert.NotNull(selection.Certificate);
        Assert.True(selection.Certificate!.Size <= selection.Certificate.SizeBound);
        Assert.Contains(0, selection.Keys);
        Assert.Contains(2, selection.Keys);
        Assert.Contains(n - 1, selection.Keys);
        Assert.Contains(n - 4, selection.Keys);
        (int heavy, var missing) = UniversalSet.Check(q, k, d, 2, 0.02, selection.Keys);
        Assert.True(heavy > 0);
        Assert.Empty(missing);

        // The output is power attention over exactly the kept keys.
        float[] ks = LevAttention.Gather(k, selection.Keys, d), vs = LevAttention.Gather(v, selection.Keys, 3);
        var expected = new float[shape.OutputLength];
        PowerAttention.Compute(q, ks, vs, new AttentionShape(1, 1, 200, selection.Keys.Length, d, 3), expected, new PowerAttentionOptions { Power = 2, Scale = 1f });
        Assert.Equal(expected, output);
    }

    [Fact]
    public void The_kv_cache_selects_the_offline_universal_set_incrementally_and_attends_like_the_batch_call()
    {
        const int d = 8, dv = 4, n = 3000;
        float[] k = Data.Normal(n * d, 21), v = Data.Normal(n * dv, 22), q = Data.Normal(d, 23);
        for (int j = 0; j < n; j += 97)
        {
            k[(j * d) + 1] *= 10;
        }

        var options = new LevAttentionOptions { Eps = 0.01, KeepFirst = 2, KeepLast = 8 };
        var cache = new LevKvCache(d, dv, options);
        for (int j = 0; j < n; j++)
        {
            cache.Append(k.AsSpan(j * d, d), v.AsSpan(j * dv, dv));
        }

        Assert.Equal(n, cache.Count);
        // Online scores sum to at most about d (1 + ln n), so at most that over eps keys are ever candidates.
        Assert.True(cache.CandidateCount <= d * (1 + Math.Log(n)) / 0.01, $"{cache.CandidateCount} candidates");
        (int[] offline, _) = UniversalSet.Compute(k, d, 0.01);
        int[] expected = LevAttention.WithAlwaysKept(offline, n, options);
        Assert.Equal(expected.Select(x => (long)x), cache.Selected);

        var incremental = new float[dv];
        cache.Attend(q, incremental);
        var batch = new float[dv];
        LevAttention.Compute(q, k, v, new AttentionShape(1, 1, 1, n, d, dv), batch, options);
        for (int c = 0; c < dv; c++)
        {
            Assert.Equal(batch[c], incremental[c], 1e-6f);
        }
    }

    [Fact]
    public void The_kv_cache_in_top_k_mode_keeps_k_plus_the_always_kept_keys()
    {
        const int d = 4, n = 800;
        float[] k = Data.Normal(n * d, 31), v = Data.Normal(n, 32);
        var cache = new LevKvCache(d, 1, new LevAttentionOptions { Top = 16, KeepLast = 5 });
        for (int j = 0; j < n; j++)
        {
            cache.Append(k.AsSpan(j * d, d), v.AsSpan(j, 1));
        }

        Assert.InRange(cache.Selected.Length, 16, 21);
        Assert.True(cache.CandidateCount <= 64);
        Assert.Contains(n - 1, cache.Selected);
    }

    [Fact]
    public void Bad_options_are_clear_errors()
    {
        var shape = AttentionShape.SingleHead(10, 4);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 1);
        var o = new float[shape.OutputLength];
        Assert.Contains("exactly one", Assert.Throws<ArgumentException>(() => LevAttention.Compute(q, k, v, shape, o, new LevAttentionOptions { Eps = 0.1, Top = 3 })).Message);
        Assert.Contains("exactly one", Assert.Throws<ArgumentException>(() => LevAttention.Compute(q, k, v, shape, o, default)).Message);
        Assert.ThrowsAny<ArgumentOutOfRangeException>(() => LevAttention.Compute(q, k, v, shape, o, new LevAttentionOptions { Eps = 2 }));
        Assert.ThrowsAny<ArgumentOutOfRangeException>(() => LevAttention.Compute(q, k, v, shape, o, new LevAttentionOptions { Top = 0 }));
        Assert.ThrowsAny<ArgumentOutOfRangeException>(() => LevAttention.Compute(q, k, v, shape, o, new LevAttentionOptions { Top = 3, Power = 5 }));
    }
}
