using System.Text.RegularExpressions;
using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The README's four C# examples. Each lies between "README example N" markers below, and the README must
/// hold exactly that code in a csharp block; the tests run it and check its results against the float64
/// reference and the brute-force checker.
/// </summary>
[Trait("Category", "Slow")]
public partial class ReadmeExampleTests
{
    [GeneratedRegex(@"// begin README example (?<n>\d)\n(?<code>.*?)\n\s*// end README example \k<n>", RegexOptions.Singleline)]
    private static partial Regex Region();

    private static (AttentionShape Shape, float[] Q, float[] K, float[] V, float[] Output, AttentionRun Run) Example1()
    {
        // begin README example 1
        // 8 query heads sharing 2 key/value heads (grouped-query attention), 1024 tokens, d = 64, causal.
        var shape = new AttentionShape(BatchSize: 1, HeadCount: 8, QueryCount: 1024, KeyCount: 1024, HeadDim: 64, ValueDim: 64, KeyValueHeadCount: 2);
        float[] q = Uniform(shape.QueryLength, seed: 1), k = Uniform(shape.KeyLength, seed: 2), v = Uniform(shape.ValueLength, seed: 3);
        var output = new float[shape.OutputLength];
        AttentionRun run = ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Causal = true });
        Console.WriteLine($"{run.Kernel}: {run.Flops / 1e9:F2} GFLOP"); // tiled-v512 on AVX-512

        static float[] Uniform(long count, int seed)
        {
            var random = new Random(seed);
            return [.. Enumerable.Range(0, (int)count).Select(_ => (random.NextSingle() * 2) - 1)];
        }
        // end README example 1
        return (shape, q, k, v, output, run);
    }

    private static (AttentionShape Shape, float[] Q, float[] K, float[] V, float[] Output, AttentionPlan Plan, PolynomialCertificate? Certificate) Example2()
    {
        // begin README example 2
        // Bounded entries and a small head: is this the polynomial method's regime, and is it faster here?
        var shape = AttentionShape.SingleHead(n: 16384, d: 4);
        var random = new Random(7);
        float[] q = [.. Enumerable.Range(0, (int)shape.QueryLength).Select(_ => (random.NextSingle() * 2) - 1)];
        float[] k = [.. Enumerable.Range(0, (int)shape.KeyLength).Select(_ => (random.NextSingle() * 2) - 1)];
        float[] v = [.. Enumerable.Range(0, (int)shape.ValueLength).Select(_ => (random.NextSingle() * 2) - 1)];

        InputBounds bounds = InputAnalysis.Analyze(q, k, shape);   // B, norms, R = max|s q.k|, regime
        AttentionPlan plan = AttentionPlanner.Plan(new PlanRequest(shape, bounds.ScoreNormBound, RelativeError: 1e-3, Causal: false),
            AttentionPlanner.Calibrate());                         // measures this machine once (~0.3 s)
        Console.WriteLine(plan.Explanation);

        var output = new float[shape.OutputLength];
        PolynomialCertificate? certificate = null;
        if (plan.Method == AttentionMethod.Polynomial)
        {
            certificate = PolynomialAttention.Compute(q, k, v, shape, output, new PolynomialAttentionOptions { RelativeError = 1e-3 });
            Console.WriteLine($"degree {certificate.Degree}, {certificate.Rank} features: every output within {NumberText.Format(certificate.OutputBound)} of exact attention");
        }
        else
        {
            ExactAttention.Compute(q, k, v, shape, output);
        }
        // end README example 2
        return (shape, q, k, v, output, plan, certificate);
    }

    private static (float[] Keys, int D, int[] Universal, UniversalSetCertificate Certificate) Example3()
    {
        // begin README example 3
        // LevAttention: the keys that can receive weight >= eps under |q.k|^2 attention from ANY query.
        int n = 20_000, d = 16;
        var random = new Random(11);
        // Uniform keys, and every 100th key 50 times longer (outlier keys, as trained models have).
        float[] keys = [.. Enumerable.Range(0, n * d).Select(i => (float)((random.NextDouble() - 0.5) * (i / d % 100 == 0 ? 50 : 1)))];
        (int[] universal, UniversalSetCertificate certificate) = UniversalSet.Compute(keys, d, eps: 0.02);
        Console.WriteLine($"{certificate.Size} of {n} keys (at most d/eps = {certificate.SizeBound}) hold every heavy entry");
        // end README example 3
        return (keys, d, universal, certificate);
    }

    private static (float[] Q, float[] K, float[] V, float[] Output, AttentionRun Run, KvCache Cache) Example4()
    {
        // begin README example 4
        // A decoding cache of 8 kv heads, d = 128, keys and values stored as q8 (8.5 bits a value), in pages that never move.
        var cache = new KvCache(kvHeads: 8, headDim: 128, valueDim: 128, new KvCacheOptions { ElementType = KvElementType.Q8 });
        var random = new Random(4);
        float[] k = [.. Enumerable.Range(0, 8 * 1000 * 128).Select(_ => random.NextSingle() - 0.5f)];
        float[] v = [.. Enumerable.Range(0, 8 * 1000 * 128).Select(_ => random.NextSingle() - 0.5f)];
        cache.Append(k, v);                                        // [kvHeads, tokens, d]: a prompt of 1000 tokens
        float[] q = [.. Enumerable.Range(0, 32 * 128).Select(_ => random.NextSingle() - 0.5f)];
        var output = new float[32 * 128];
        AttentionRun run = cache.Attend(q, heads: 32, output);    // one new token's 32 query heads, causal
        Console.WriteLine($"{run.Kernel}, {cache.BytesUsed >> 20} MiB: every output within {NumberText.Format(run.KvBound!.Absolute, 2)} of float32 storage");
        // end README example 4
        return (q, k, v, output, run, cache);
    }

    [Fact]
    public void Example_4_q8_decoding_cache_matches_float64_within_its_bound()
    {
        (float[] q, float[] k, float[] v, float[] output, AttentionRun run, KvCache cache) = Example4();
        using (cache)
        {
            // The reference: each kv head's 1000 tokens against its 4 query heads, on the original float32 keys and values.
            var shape = new AttentionShape(1, 32, 1, 1000, 128, 128, 8);
            var expected = new double[output.Length];
            ReferenceAttention.Compute(q, k, v, shape, expected);
            double worst = expected.Select((e, x) => Math.Abs(e - output[x])).Max();
            Assert.StartsWith("splitkey-", run.Kernel, StringComparison.Ordinal);
            Assert.True(worst <= run.KvBound!.Absolute + 1e-5, $"max |error| {worst} > bound {run.KvBound.Absolute}");
            Assert.True(worst > 0);
        }
    }

    [Fact]
    public void The_readme_shows_each_example_exactly_as_tested()
    {
        string source = File.ReadAllText(Path.Combine(Data.RepoRoot, "tests", "FastAttention.Tests", "ReadmeExampleTests.cs")).ReplaceLineEndings("\n");
        string readme = File.ReadAllText(Path.Combine(Data.RepoRoot, "README.md")).ReplaceLineEndings("\n");
        MatchCollection regions = Region().Matches(source);
        Assert.Equal(4, regions.Count);
        foreach (Match region in regions)
        {
            string[] lines = region.Groups["code"].Value.Split('\n');
            int indent = lines.Where(l => l.Trim().Length > 0).Min(l => l.Length - l.TrimStart().Length);
            string code = string.Join("\n", lines.Select(l => l.Length >= indent ? l[indent..] : l.TrimStart()));
            Assert.True(readme.Contains("```csharp\n" + code + "\n```", StringComparison.Ordinal), $"README.md lacks example {region.Groups["n"].Value} as tested (python3 tools/update_readme.py copies it):\n{code}");
        }
    }

    [Fact]
    public void Example_1_exact_grouped_query_causal_matches_float64()
    {
        (AttentionShape shape, float[] q, float[] k, float[] v, float[] output, AttentionRun run) = Example1();
        Assert.NotNull(run.Kernel);
        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q, k, v, shape, reference, causal: true);
        double worst = output.Select((x, i) => Math.Abs(x - reference[i])).Max();
        Assert.True(worst < 1e-5, $"max |error| {worst}");
    }

    [Fact]
    public void Example_2_plans_the_polynomial_method_and_its_certificate_holds()
    {
        (AttentionShape shape, float[] q, float[] k, float[] v, float[] output, AttentionPlan plan, PolynomialCertificate? certificate) = Example2();
        Assert.Equal(AttentionMethod.Polynomial, plan.Method); // n = 16384, d = 4, entries in [-1, 1]: far past the crossover
        Assert.NotNull(certificate);
        const int Rows = 512; // the float64 reference for the first rows, against all keys
        var reference = new double[Rows * shape.ValueDim];
        ReferenceAttention.Compute(q.AsSpan(0, Rows * shape.HeadDim), k, v, shape with { QueryCount = Rows }, reference);
        double worst = reference.Select((x, i) => Math.Abs(output[i] - x)).Max();
        Assert.True(worst <= certificate.OutputBound, $"max |error| {worst} > certificate {certificate.OutputBound}");
    }

    [Fact]
    public void Example_3_universal_set_holds_every_heavy_entry_of_adversarial_queries()
    {
        (float[] keys, int d, int[] universal, UniversalSetCertificate certificate) = Example3();
        Assert.True(certificate.Size <= certificate.SizeBound);
        Assert.Equal(certificate.Size, universal.Length);
        int n = keys.Length / d;
        float[] queries = [.. keys.AsSpan(0, 200 * d).ToArray(), .. Data.Normal(200L * d, 5)]; // keys themselves and random directions
        (int heavy, var missing) = UniversalSet.Check(queries, keys, d, 2, 0.02, universal);
        Assert.True(heavy > 0);
        Assert.Empty(missing);
        Assert.True(universal.Length < n / 10);
    }
}
