using System.Text.Json;
using FastAttention.Lab;
using FastAttention.Lab.Reports;
using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>The lab's public pieces (verdicts, bandwidth figures, the method table, the benchmark API) and the CLI doors over them.</summary>
public class LabTests
{
    [Fact]
    public void A_claim_measured_on_nothing_is_not_measured()
    {
        Assert.Equal(Verdict.NotMeasured, Claim.Of());
        Assert.Equal(Verdict.NotMeasured, Claim.Of([.. Array.Empty<int>().Select(x => x > 0)]));
        Assert.Equal(Verdict.Holds, Claim.Of(true, true));
        Assert.Equal(Verdict.Partly, Claim.Of(true, false));
        Assert.Equal(Verdict.DoesNotHold, Claim.Of(false));
        Assert.Equal(["holds", "partly", "does not hold", "not measured"], Claim.Texts);
    }

    [Fact]
    public void The_bandwidth_percentage_is_against_the_read_that_was_measured_and_never_above_100()
    {
        // The method reads 1 GB in 0.1 s (10 GB/s); a plain read of the same bytes took 0.05 s (20 GB/s).
        BandwidthFigure slower = BandwidthFigure.Of(1e9, 0.1, 0.05);
        Assert.Equal(20, slower.PlainReadGBps, 9);
        Assert.Equal(10, slower.MethodGBps, 9);
        Assert.Equal(20, slower.ReferenceGBps, 9);
        Assert.Equal("plain-read", slower.Reference);
        Assert.Equal(50, slower.PercentOfBandwidth, 9);

        // A method that outruns the plain read (cached inputs, better prefetching) has itself shown the faster rate.
        BandwidthFigure faster = BandwidthFigure.Of(1e9, 0.05, 0.0861);
        Assert.Equal("method", faster.Reference);
        Assert.Equal(faster.MethodGBps, faster.ReferenceGBps);
        Assert.Equal(100, faster.PercentOfBandwidth, 9);

        var random = new Random(5);
        for (int i = 0; i < 1000; i++)
        {
            BandwidthFigure figure = BandwidthFigure.Of(1 + (random.NextDouble() * 1e9), 1e-6 + random.NextDouble(), 1e-6 + random.NextDouble());
            Assert.InRange(figure.PercentOfBandwidth, 0, 100);
        }
    }

    [Fact]
    public void Bench_bandwidth_reports_the_percentage_of_the_rate_it_states()
    {
        (int code, string stdout, string stderr) = CliRun.Run("bench", "--n", "1", "--nk", "4096", "--heads", "4", "--d", "64", "--threads", "1", "--repeat", "5", "--bandwidth", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement r = json.RootElement;
        double input = r.GetProperty("inputGBps").GetDouble(), plain = r.GetProperty("plainReadGBps").GetDouble(), reference = r.GetProperty("readBandwidthGBps").GetDouble();
        Assert.Equal(Math.Max(plain, input), reference);
        Assert.Equal(Math.Min(100, 100 * input / reference), r.GetProperty("percentOfBandwidth").GetDouble(), 9);
        Assert.True(r.GetProperty("percentOfBandwidth").GetDouble() <= 100);
        Assert.Equal(input > plain ? "method" : "plain-read", r.GetProperty("readBandwidthReference").GetString());
    }

    [Fact]
    public void The_method_table_has_one_entry_per_method_and_each_forward_is_the_librarys()
    {
        Assert.Equal(["exact", "poly", "sketch", "lev", "power", "tensor", "tensor-poly"], MethodTable.Names);
        Assert.All(MethodTable.All, m => Assert.False(string.IsNullOrWhiteSpace(m.Summary)));
        Assert.Equal(["lev"], MethodTable.Accepting("top"));
        Assert.Throws<ArgumentException>(() => MethodTable.Find("nonsense"));

        var shape = new AttentionShape(1, 2, 33, 40, 8, 8);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 3);
        var settings = new MethodSettings { Threads = 1, Top = 5, Eps = 0.2, Scale = 0.05f }; // small scores: a low polynomial degree
        foreach (MethodEntry entry in MethodTable.All)
        {
            MethodInputs inputs = entry.IsTensor ? new MethodInputs(q, [k, v], [v, k]) : MethodInputs.Of(q, k, v);
            var output = new float[shape.OutputLength];
            MethodRun run = entry.Forward(inputs, shape, output, entry.Name == "lev" ? settings with { Eps = null } : settings);
            Assert.All(output, x => Assert.True(float.IsFinite(x), entry.Name));
            Assert.True(entry.Flops(shape, settings, run) > 0, entry.Name);
            Assert.Equal(entry.IsApproximate, entry.ExactEquivalentFlops is not null);
        }

        var expected = new float[shape.OutputLength];
        var actual = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, expected, new ExactAttentionOptions { Scale = 0.05f, MaxDegreeOfParallelism = 1 });
        MethodTable.Find("exact").Forward(MethodInputs.Of(q, k, v), shape, actual, settings);
        Assert.Equal(expected, actual);
        Assert.Equal(FlopCount.ExactAttention(1, 2, 33, 40, 8, 8, causal: false), MethodTable.Find("exact").Flops(shape, settings, null));

        // lev: per (batch, kv head) the selection (3 nk d^2 + d^3/3) and attention over the kept keys.
        double lev = MethodTable.Find("lev").Flops(shape, settings with { Eps = null }, null);
        Assert.Equal(2 * ((3.0 * 40 * 64) + (512.0 / 3) + (2.0 * 33 * 5 * 16)), lev, 6);
    }

    [Fact]
    public void Every_method_with_a_backward_has_the_float64_reference_gradients_on_a_tiny_input()
    {
        // 2 query heads over 1 kv head (grouped-query), nq = 5 != nk = 7, d = 4, dv = 3, causal, scale 0.4.
        var shape = new AttentionShape(1, 2, 5, 7, 4, 3, 1);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 5);
        float[] dO = Data.Normal(shape.OutputLength, 9);
        var settings = new MethodSettings { Threads = 1, Scale = 0.4f, Causal = true, Power = 3 };

        // The float64 reference of each method's gradients; a method given a backward gets its reference here.
        var references = new Dictionary<string, Action<double[], double[], double[]>>
        {
            ["exact"] = (dq, dk, dv) => ReferenceAttention.Backward(q, k, v, dO, shape, dq, dk, dv, 0.4, causal: true),
            ["power"] = (dq, dk, dv) => ReferenceAttention.PowerBackward(q, k, v, dO, shape, dq, dk, dv, power: 3, scale: 0.4, causal: true),
            ["poly"] = (dq, dk, dv) => Factorised(dq, dk, dv, new PolynomialPairWeight(
                PolynomialAttention.Prepare(PolynomialAttention.RangeBound(q, k, shape.HeadDim, 0.4f), 0.4f, shape.HeadDim, new PolynomialAttentionOptions { Scale = 0.4f, Causal = true }).Polynomial.Coefficients, 0.4f)),
            ["sketch"] = (dq, dk, dv) =>
            {
                SketchFeatureMap map = SketchedAttention.Map(shape, new SketchedAttentionOptions { Scale = 0.4f, Causal = true });
                Factorised(dq, dk, dv, new SketchPairWeight(map.Sketch1.ToArray(), map.Sketch2.ToArray(), map.SketchSize, 0.4f));
            },
        };

        void Factorised(double[] dq, double[] dk, double[] dv, PairWeight weight)
        {
            (double[] gq, double[] gk, double[] gv) = ReferenceFactorisedBackward.Backward(Gradients.ToDouble(q), Gradients.ToDouble(k), Gradients.ToDouble(v), Gradients.ToDouble(dO), shape, true, weight);
            gq.CopyTo(dq, 0);
            gk.CopyTo(dk, 0);
            gv.CopyTo(dv, 0);
        }
        Assert.Contains("exact", MethodTable.WithBackward);
        Assert.Contains("power", MethodTable.WithBackward);
        foreach (MethodEntry entry in MethodTable.All.Where(m => m.HasBackward && !m.IsTensor && m.Name != "lev"))
        {
            Assert.True(references.ContainsKey(entry.Name), $"{entry.Name} has a backward: add its float64 reference to this test");
            MethodGradients grads = entry.Backward!(MethodInputs.Of(q, k, v), shape, dO, settings);
            Assert.Equal(["dq", "dk", "dv"], grads.Gradients.Select(g => g.Name));
            double[] dq = new double[q.Length], dk = new double[k.Length], dv = new double[v.Length];
            references[entry.Name](dq, dk, dv);
            foreach ((string name, double[] expected) in new[] { ("dq", dq), ("dk", dk), ("dv", dv) })
            {
                Gradients.AssertClose(Gradients.ToDouble(grads[name]), expected, 1e-4 * Math.Max(1, Gradients.MaxAbs(expected)), 1e-3, $"{entry.Name} {name}");
            }

            var output = new float[shape.OutputLength];
            MethodRun run = entry.Forward(MethodInputs.Of(q, k, v), shape, output, settings);
            Gradients.AssertClose(Gradients.ToDouble(grads.Output), Gradients.ToDouble(output), 1e-6, 1e-5, $"{entry.Name} training forward");
            Assert.Equal(entry.Flops(shape, settings, run), grads.ForwardFlops);
            Assert.True(grads.BackwardFlops > 0, entry.Name);
            Assert.Equal(grads.ForwardFlops + grads.BackwardFlops, grads.Flops);
        }

        // lev keeping every key (top = nk) is exact attention: its gradients are the exact reference's (lev has no causal mask).
        MethodGradients lev = MethodTable.Find("lev").Backward!(MethodInputs.Of(q, k, v), shape, dO, settings with { Causal = false, Top = shape.KeyCount });
        double[] lq = new double[q.Length], lk = new double[k.Length], lv = new double[v.Length];
        ReferenceAttention.Backward(q, k, v, dO, shape, lq, lk, lv, 0.4);
        foreach ((string name, double[] expected) in new[] { ("dq", lq), ("dk", lk), ("dv", lv) })
        {
            Gradients.AssertClose(Gradients.ToDouble(lev[name]), expected, 1e-4 * Math.Max(1, Gradients.MaxAbs(expected)), 1e-3, $"lev {name}");
        }

        // Tensor attention: one key/value head per query head, five gradients against the float64 tensor reference.
        var tensorShape = new AttentionShape(1, 2, 6, 6, 4, 3);
        (float[] tq, float[] tk1, float[] tv1) = Data.Inputs(tensorShape, 7);
        float[] tk2 = Data.Normal(tk1.Length, 17), tv2 = Data.Normal(tv1.Length, 18), tdO = Data.Normal(tensorShape.OutputLength, 19);
        MethodGradients tensor = MethodTable.Find("tensor").Backward!(new MethodInputs(tq, [tk1, tk2], [tv1, tv2]), tensorShape, tdO, settings);
        Assert.Equal(MethodGradients.NamesOf(2), tensor.Gradients.Select(g => g.Name));
        double[] rq = new double[tq.Length];
        double[][] rk = [new double[tk1.Length], new double[tk2.Length]], rv = [new double[tv1.Length], new double[tv2.Length]];
        ReferenceTensorAttention.Backward(tq, [tk1, tk2], [tv1, tv2], tdO, MethodTable.TensorShape(tensorShape), rq, [rk[0], rk[1]], [rv[0], rv[1]],
            new TensorAttentionOptions { Scale = 0.4f, Causal = true });
        foreach ((string name, double[] expected) in new[] { ("dq", rq), ("dk1", rk[0]), ("dk2", rk[1]), ("dv1", rv[0]), ("dv2", rv[1]) })
        {
            Gradients.AssertClose(Gradients.ToDouble(tensor[name]), expected, 1e-4 * Math.Max(1, Gradients.MaxAbs(expected)), 1e-3, $"tensor {name}");
        }

        Assert.Equal(FlopCount.ExactAttentionBackward(1, 2, 5, 7, 4, 3, causal: true), MethodTable.Find("exact").Backward!(MethodInputs.Of(q, k, v), shape, dO, settings).BackwardFlops);
        Assert.All(MethodTable.All.Where(m => !m.HasBackward), m => Assert.Contains(m.Name + " has no backward yet", MethodTable.NoBackward(m.Name)));
        MethodEntry without = MethodTable.All.First(m => !m.HasBackward);
        Assert.Throws<ArgumentException>(() => Benchmark.Run(new BenchmarkRequest(without.Name, shape) { Settings = settings with { Top = 2 }, Backward = true, Repeats = 1 }));
    }

    [Fact]
    public void Bench_lev_reports_its_own_flops_and_the_effective_rate_against_exact()
    {
        (int code, string stdout, string stderr) = CliRun.Run("bench", "--method", "lev", "--n", "300", "--d", "16", "--top", "8", "--repeat", "2", "--threads", "1", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument json = JsonDocument.Parse(stdout);
        JsonElement r = json.RootElement;
        double median = r.GetProperty("medianSeconds").GetDouble();
        double own = (3.0 * 300 * 16 * 16) + (16.0 * 16 * 16 / 3) + (2.0 * 300 * 8 * 32);
        Assert.Equal(own, r.GetProperty("flops").GetDouble(), 6);
        Assert.Equal(own / median / 1e9, r.GetProperty("gflops").GetDouble(), 9);
        Assert.Equal(FlopCount.ExactAttention(1, 1, 300, 300, 16, 16, causal: false), r.GetProperty("exactEquivalentFlops").GetDouble());
        Assert.Equal(r.GetProperty("exactEquivalentFlops").GetDouble() / median / 1e9, r.GetProperty("effectiveGflops").GetDouble(), 9);
        Assert.Equal(8, r.GetProperty("meanKeptKeys").GetDouble());
        Assert.False(string.IsNullOrEmpty(r.GetProperty("cpu").GetString()));

        (code, _, stderr) = CliRun.Run("bench", "--n", "64", "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("--top applies to --method lev, not exact", stderr);
    }

    [Fact]
    public void Bench_gflops_are_the_methods_own_and_effective_gflops_only_for_approximate_methods()
    {
        (int code, string stdout, string stderr) = CliRun.Run("bench", "--method", "poly", "--n", "400", "--d", "4", "--scale", "0.25", "--repeat", "2", "--json");
        Assert.True(code == 0, stderr);
        using (JsonDocument json = JsonDocument.Parse(stdout))
        {
            JsonElement r = json.RootElement;
            double median = r.GetProperty("medianSeconds").GetDouble();
            Assert.True(r.GetProperty("flops").GetDouble() < r.GetProperty("exactEquivalentFlops").GetDouble());
            Assert.Equal(r.GetProperty("flops").GetDouble() / median / 1e9, r.GetProperty("gflops").GetDouble(), 9);
            Assert.Equal(r.GetProperty("exactEquivalentFlops").GetDouble() / median / 1e9, r.GetProperty("effectiveGflops").GetDouble(), 9);
        }

        (code, stdout, stderr) = CliRun.Run("bench", "--n", "100", "--repeat", "2", "--json");
        Assert.True(code == 0, stderr);
        using JsonDocument exact = JsonDocument.Parse(stdout);
        Assert.Equal(JsonValueKind.Null, exact.RootElement.GetProperty("effectiveGflops").ValueKind);
        Assert.False(exact.RootElement.TryGetProperty("gflopsAreEffective", out _));
    }

    [Fact]
    public void The_benchmark_api_states_the_cpu_and_time_of_each_measurement()
    {
        BenchmarkResult r = Benchmark.Run(new BenchmarkRequest("exact", AttentionShape.SingleHead(64, 8)) { Settings = new MethodSettings { Threads = 1 }, Repeats = 3 });
        Assert.Equal(Machine.CpuModel, r.Machine.CpuModel);
        Assert.InRange(r.Machine.UtcTime, DateTime.UtcNow.AddMinutes(-5), DateTime.UtcNow);
        Assert.Equal(3, r.Repeats);
        Assert.True(r.MinSeconds <= r.MedianSeconds);
        Assert.Null(r.EffectiveGflops);
        string table = ReportBenchmarks.Table([r]);
        Assert.Contains("Measured on " + Machine.CpuModel, table);
        Assert.Contains(r.Machine.UtcTime.ToString("yyyy-MM-dd HH:mm", System.Globalization.CultureInfo.InvariantCulture) + " UTC", table);
    }

    [Fact]
    public void A_cancelled_report_or_experiment_leaves_no_output_folder()
    {
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        foreach (string[] args in new[] { new[] { "report", "--repo", Data.RepoRoot }, ["experiment", "sketch"] })
        {
            string root = Data.TempDir();
            string dir = Path.Combine(root, "new", "out");
            var stderr = new StringWriter();
            int code = FastAttention.Cli.Cli.Run([.. args, "--out", dir], new StringWriter(), stderr, null, cancel.Token);
            Assert.Equal(130, code);
            Assert.Contains("cancelled", stderr.ToString());
            Assert.Empty(Directory.GetFileSystemEntries(root)); // neither the folder nor the parent created for it
        }

        Assert.Throws<OperationCanceledException>(() => LabReport.Produce(new ReportSettings(Data.RepoRoot), TextWriter.Null, new LabProgress(null, cancel.Token)));
    }

    [Fact]
    public void The_experiments_read_only_the_repositorys_data()
    {
        Assert.Equal(2, CliRun.Run("experiment", "levattention", "--shared", "x").Code);
        Assert.Equal(2, CliRun.Run("report", "--shared", "x").Code);
        foreach (string file in Directory.EnumerateFiles(Path.Combine(Data.RepoRoot, "src"), "*.cs", SearchOption.AllDirectories))
        {
            Assert.DoesNotContain("\"shared\"", File.ReadAllText(file));
        }
    }

    [Fact]
    public void Each_method_checks_its_own_settings_and_the_benchmark_api_refuses_what_it_rejects()
    {
        MethodEntry poly = MethodTable.Find("poly"), lev = MethodTable.Find("lev"), exact = MethodTable.Find("exact");
        Assert.Null(poly.WhyNot(new MethodSettings { Eps = 1e-3 }));
        Assert.Contains("(0, 1)", poly.WhyNot(new MethodSettings { Eps = 1 }));
        Assert.Contains("(0, 1]", lev.WhyNot(new MethodSettings { Eps = 2 }));
        Assert.Contains("exactly one of", lev.WhyNot(new MethodSettings()));
        Assert.Contains("exactly one of", lev.WhyNot(new MethodSettings { Eps = 0.1, Top = 3 }));
        Assert.Null(lev.WhyNot(new MethodSettings { Top = 3 }));
        Assert.Null(exact.WhyNot(new MethodSettings { Eps = 5 }));
        var request = new BenchmarkRequest("lev", new AttentionShape(1, 1, 8, 8, 4, 4)) { Settings = new MethodSettings(), Repeats = 1 };
        Assert.Contains("exactly one of", Assert.Throws<ArgumentException>(() => Benchmark.Run(request)).Message);
    }
}

