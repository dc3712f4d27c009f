using FastAttention.Polynomial;

namespace FastAttention.Tests;

/// <summary>Issue 4, deliverable 5: the planner chooses by predicted cost and refuses what it cannot certify.</summary>
public class PlannerTests
{
    // A machine whose exact kernel does 300 GFLOP/s with 0.3 ns of softmax per score, and whose
    // factorised engine does 80 GFLOP/s after 1 ms of fixed cost.
    private static readonly MethodThroughput Machine = new(3e-10, 1 / 300e9, 80e9, 1e-3, 25e9, 2e9, 2);

    [Fact]
    public void Long_bounded_inputs_get_the_polynomial_method_and_short_ones_exact()
    {
        AttentionPlan large = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(65536, 8), 1.0, 1e-3, false), Machine);
        Assert.Equal(AttentionMethod.Polynomial, large.Method);
        Assert.Equal(ExpPolynomial.Fit(1.0, 1e-3).Degree, large.Degree);
        Assert.Equal(MonomialFeatures.Rank(8, large.Degree!.Value), large.Rank);
        Assert.Contains("faster than exact", large.Explanation);

        AttentionPlan small = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(64, 8), 1.0, 1e-3, false), Machine);
        Assert.Equal(AttentionMethod.Exact, small.Method);
        Assert.True(small.Candidates[1].Feasible); // feasible, just slower
        Assert.True(small.Candidates[1].PredictedSeconds > small.Candidates[0].PredictedSeconds);
    }

    [Fact]
    public void The_choice_follows_the_cheaper_prediction_as_n_grows()
    {
        // Somewhere between n = 64 and n = 65536 the polynomial method takes over, and stays ahead.
        bool seenPoly = false;
        for (int n = 64; n <= 65536; n *= 2)
        {
            AttentionPlan plan = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(n, 8), 1.0, 1e-3, false), Machine);
            AttentionMethod cheaper = plan.Candidates[1].PredictedSeconds < plan.Candidates[0].PredictedSeconds ? AttentionMethod.Polynomial : AttentionMethod.Exact;
            Assert.Equal(cheaper, plan.Method);
            Assert.False(seenPoly && plan.Method == AttentionMethod.Exact, $"n = {n}: back to exact after the crossover");
            seenPoly |= plan.Method == AttentionMethod.Polynomial;
        }

        Assert.True(seenPoly);
    }

    [Fact]
    public void Transformer_heads_wide_ranges_and_memory_budgets_are_refused_with_reasons()
    {
        AttentionPlan wide = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(65536, 64), 4.0, 1e-3, false), Machine);
        Assert.Equal(AttentionMethod.Exact, wide.Method);
        Assert.False(wide.Candidates[1].Feasible);
        Assert.Contains("over the budget", wide.Candidates[1].Reason);

        AttentionPlan unbounded = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(65536, 4), 400.0, 1e-6, false), Machine);
        Assert.Equal(AttentionMethod.Exact, unbounded.Method);
        Assert.Contains("no polynomial", unbounded.Candidates[1].Reason);
        Assert.Null(unbounded.Degree);

        AttentionPlan memory = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(65536, 8), 1.0, 1e-3, false, MaxMemoryBytes: 1 << 16), Machine);
        Assert.Equal(AttentionMethod.Exact, memory.Method);
        Assert.Contains("MiB of working memory", memory.Candidates[1].Reason);
    }

    [Fact]
    public void The_sketch_is_listed_but_never_chosen_for_softmax()
    {
        foreach (int n in new[] { 128, 65536 })
        {
            AttentionPlan plan = AttentionPlanner.Plan(new PlanRequest(AttentionShape.SingleHead(n, 64), 0.5, 1e-2, true), Machine);
            Assert.Equal([AttentionMethod.Exact, AttentionMethod.Polynomial, AttentionMethod.Sketch], plan.Candidates.Select(c => c.Method));
            Assert.NotEqual(AttentionMethod.Sketch, plan.Method);
            Assert.False(plan.Candidates[2].Feasible);
        }
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Calibration_measures_positive_finite_costs_once_per_thread_count()
    {
        MethodThroughput measured = AttentionPlanner.Calibrate(1);
        Assert.True(measured.ExactFlopSeconds > 0 && double.IsFinite(measured.ExactFlopSeconds));
        Assert.True(measured.ExactPairSeconds >= 0 && double.IsFinite(measured.ExactPairSeconds));
        Assert.True(measured.PolynomialFlopsPerSecond > 0 && double.IsFinite(measured.PolynomialFlopsPerSecond));
        Assert.InRange(measured.PolynomialLargeRankFlopsPerSecond, 1e6, measured.PolynomialFlopsPerSecond);
        Assert.Equal(1, measured.PolynomialRate(10) / measured.PolynomialFlopsPerSecond, 9);
        Assert.Equal(1, measured.PolynomialRate(1_000_000) / measured.PolynomialLargeRankFlopsPerSecond, 9);
        Assert.True(measured.DiagonalFlopsPerSecond > 0);
        Assert.Same(measured, AttentionPlanner.Calibrate(1));
    }
}
