using System.Diagnostics;
using System.Globalization;
using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>The attention methods the planner chooses between.</summary>
public enum AttentionMethod
{
    /// <summary>Exact tiled softmax attention (<see cref="ExactAttention"/>).</summary>
    Exact,

    /// <summary>The polynomial method with a certificate (<see cref="PolynomialAttention"/>).</summary>
    Polynomial,

    /// <summary>Sketched degree-4 attention (<see cref="SketchedAttention"/>): statistical error, a different attention.</summary>
    Sketch,
}

/// <summary>
/// Measured costs the planner converts work into seconds with. Exact: <c>t = pairs (PairSeconds + FlopSeconds 2 (d + dv))</c>,
/// since the softmax costs the same per score at any d while the products scale with d. Polynomial:
/// <c>t = PolynomialFixedSeconds + flops / PolynomialFlopsPerSecond</c> (the fixed part fits the polynomial
/// and scans the inputs).
/// </summary>
/// <param name="ExactPairSeconds">Exact kernel: seconds per (query, key) pair independent of d (the online softmax).</param>
/// <param name="ExactFlopSeconds">Exact kernel: seconds per flop of the two products.</param>
/// <param name="PolynomialFlopsPerSecond">The factorised engine at a small feature count (<see cref="AttentionPlanner.SmallRank"/>, features in cache), counting <see cref="PolynomialAttention.PredictedFlops"/>.</param>
/// <param name="PolynomialFixedSeconds">The polynomial method's cost independent of n.</param>
/// <param name="PolynomialLargeRankFlopsPerSecond">The engine at <see cref="AttentionPlanner.LargeRank"/> features, where a feature block no longer fits in cache; rates in between are interpolated in log r.</param>
/// <param name="DiagonalFlopsPerSecond">The causal path's direct diagonal blocks (scalar code), counting 2 (d + g + dv + 1) per pair.</param>
/// <param name="Threads">The thread count measured with.</param>
public sealed record MethodThroughput(double ExactPairSeconds, double ExactFlopSeconds, double PolynomialFlopsPerSecond, double PolynomialFixedSeconds, double PolynomialLargeRankFlopsPerSecond, double DiagonalFlopsPerSecond, int Threads)
{
    /// <summary>The engine's rate at r features: measured at two ranks, interpolated in log r, constant outside.</summary>
    /// <param name="rank">r.</param>
    /// <returns>Flops per second.</returns>
    public double PolynomialRate(long rank)
    {
        double t = Math.Clamp((Math.Log(rank) - Math.Log(AttentionPlanner.SmallRank)) / (Math.Log(AttentionPlanner.LargeRank) - Math.Log(AttentionPlanner.SmallRank)), 0, 1);
        return Math.Exp(((1 - t) * Math.Log(PolynomialFlopsPerSecond)) + (t * Math.Log(PolynomialLargeRankFlopsPerSecond)));
    }

    /// <summary>Predicted seconds of the polynomial method on <paramref name="shape"/> with r features (non-causal).</summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="rank">r.</param>
    /// <returns>Seconds.</returns>
    public double PolynomialSeconds(AttentionShape shape, long rank) =>
        PolynomialFixedSeconds + (PolynomialAttention.PredictedFlops(shape, rank) / PolynomialRate(rank));
}

/// <summary>What the planner is asked.</summary>
/// <param name="Shape">The dimensions.</param>
/// <param name="Range">R, a bound on |s q.k| (e.g. <see cref="InputBounds.ScoreNormBound"/>).</param>
/// <param name="RelativeError">The target eps of the polynomial.</param>
/// <param name="Causal">Causal masking.</param>
/// <param name="MaxRank">The largest feature count allowed; 0 means <see cref="PolynomialAttention.DefaultMaxRank"/>.</param>
/// <param name="MaxMemoryBytes">The largest working memory allowed for the polynomial method; 0 means 1 GiB.</param>
public sealed record PlanRequest(AttentionShape Shape, double Range, double RelativeError, bool Causal, long MaxRank = 0, long MaxMemoryBytes = 0);

/// <summary>One method's predicted cost, or why it cannot run.</summary>
/// <param name="Method">The method.</param>
/// <param name="Feasible">Whether it can run and meet the request.</param>
/// <param name="PredictedSeconds">Predicted time, or +inf when infeasible.</param>
/// <param name="Reason">Why: the cost and its parts, or the refusal.</param>
public sealed record PlanCandidate(AttentionMethod Method, bool Feasible, double PredictedSeconds, string Reason);

/// <summary>The planner's choice with every candidate it weighed.</summary>
/// <param name="Method">The chosen method.</param>
/// <param name="Explanation">One sentence: why this method.</param>
/// <param name="Degree">The polynomial degree the polynomial candidate would use, if one reaches eps.</param>
/// <param name="Rank">Its feature count r.</param>
/// <param name="Candidates">Exact, polynomial and sketch, in that order.</param>
public sealed record AttentionPlan(AttentionMethod Method, string Explanation, int? Degree, long? Rank, IReadOnlyList<PlanCandidate> Candidates);

/// <summary>
/// Chooses exact, polynomial or sketched attention by predicted time (docs/algorithms.md §5: "plan the
/// dispatcher from measurements"): predicted flops of each method divided by that method's throughput,
/// measured on this machine by <see cref="Calibrate"/>. The polynomial method is refused when R needs a
/// degree whose feature count r exceeds the rank or memory budget, or when no degree reaches eps; the
/// sketch approximates degree-4 attention, not softmax, and carries no certificate, so it is listed but
/// never chosen for a softmax request.
/// </summary>
public static class AttentionPlanner
{
    /// <summary>The feature count of the small calibration run: C(8 + 4, 4).</summary>
    public const long SmallRank = 495;

    /// <summary>The feature count of the large calibration run: C(8 + 9, 9).</summary>
    public const long LargeRank = 24310;

    private static readonly Dictionary<int, MethodThroughput> Calibrated = [];

    /// <summary>Measures the exact kernel and the factorised engine on small seeded problems (about 0.1 s the first time; cached per thread count).</summary>
    /// <param name="maxDegreeOfParallelism">Threads; 0 means one per core.</param>
    /// <returns>The measured throughputs.</returns>
    public static MethodThroughput Calibrate(int maxDegreeOfParallelism = 0)
    {
        int threads = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : Environment.ProcessorCount;
        lock (Calibrated)
        {
            if (Calibrated.TryGetValue(threads, out MethodThroughput? known))
            {
                return known;
            }
        }

        var random = new Random(1);
        float[] Uniform(long count) => [.. Enumerable.Range(0, (int)count).Select(_ => (random.NextSingle() * 2) - 1)];
        double TimeExact(int d)
        {
            var shape = AttentionShape.SingleHead(1024, d);
            float[] q = Uniform(shape.QueryLength), k = Uniform(shape.KeyLength), v = Uniform(shape.ValueLength), o = new float[shape.OutputLength];
            return Best(() => ExactAttention.Compute(q, k, v, shape, o, new ExactAttentionOptions { MaxDegreeOfParallelism = threads }));
        }

        // Two head dimensions separate the per-score softmax cost from the per-flop product cost.
        const double Pairs = 1024.0 * 1024;
        double wide = TimeExact(64), narrow = TimeExact(8);
        double flopSeconds = Math.Max((wide - narrow) / (Pairs * 2 * (128 - 16)), 1e-15);
        double pairSeconds = Math.Max((narrow / Pairs) - (flopSeconds * 2 * 16), 0);

        // Two lengths separate the polynomial method's fixed cost from its rate.
        var options = new PolynomialAttentionOptions { Scale = 0.125f, Degree = 4, MaxDegreeOfParallelism = threads };
        (double Seconds, double Flops) TimePolynomial(int n, bool causal)
        {
            var shape = AttentionShape.SingleHead(n, 8);
            float[] q = Uniform(shape.QueryLength), k = Uniform(shape.KeyLength), v = Uniform(shape.ValueLength), o = new float[shape.OutputLength];
            return (Best(() => PolynomialAttention.Compute(q, k, v, shape, o, options with { Causal = causal })), PolynomialAttention.PredictedFlops(shape, MonomialFeatures.Rank(8, 4)));
        }

        (double small, double smallFlops) = TimePolynomial(1024, false);
        (double large, double largeFlops) = TimePolynomial(16384, false);
        double rate = (largeFlops - smallFlops) / Math.Max(large - small, 1e-9);
        double fixedSeconds = Math.Max(small - (smallFlops / rate), 0);
        (double causalSeconds, _) = TimePolynomial(16384, true);
        var wideShape = AttentionShape.SingleHead(1024, 8);
        float[] wq = Uniform(wideShape.QueryLength), wk = Uniform(wideShape.KeyLength), wv = Uniform(wideShape.ValueLength), wo = new float[wideShape.OutputLength];
        double wideSeconds = Best(() => PolynomialAttention.Compute(wq, wk, wv, wideShape, wo, options with { Degree = 9 }));
        double largeRate = PolynomialAttention.PredictedFlops(wideShape, LargeRank) / Math.Max(wideSeconds - fixedSeconds, wideSeconds * 0.05);
        double diagonal = DiagonalFlops(AttentionShape.SingleHead(16384, 8), 4) / Math.Max(causalSeconds - large, large * 0.05);

        var result = new MethodThroughput(pairSeconds, flopSeconds, rate, fixedSeconds, Math.Min(rate, largeRate), diagonal, threads);
        lock (Calibrated)
        {
            Calibrated[threads] = result;
        }

        return result;
    }

    /// <summary>Plans one call.</summary>
    /// <param name="request">Shape, R, eps, causal and budgets.</param>
    /// <param name="throughput">Measured speeds (from <see cref="Calibrate"/>).</param>
    /// <returns>The choice, its explanation and every candidate.</returns>
    public static AttentionPlan Plan(PlanRequest request, MethodThroughput throughput)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(throughput);
        var inv = CultureInfo.InvariantCulture;
        AttentionShape shape = request.Shape;
        long maxRank = request.MaxRank > 0 ? request.MaxRank : PolynomialAttention.DefaultMaxRank;
        long maxMemory = request.MaxMemoryBytes > 0 ? request.MaxMemoryBytes : 1L << 30;

        double exactFlops = FlopCountExact(shape, request.Causal);
        double pairs = exactFlops / (2.0 * (shape.HeadDim + shape.ValueDim));
        double exactSeconds = (pairs * throughput.ExactPairSeconds) + (exactFlops * throughput.ExactFlopSeconds);
        var exact = new PlanCandidate(AttentionMethod.Exact, true, exactSeconds, string.Create(inv,
            $"exact: {NumberText.Format(pairs)} scores at a measured {throughput.ExactPairSeconds * 1e12:F0} ps each (softmax) plus {NumberText.Format(exactFlops / 1e9)} GFLOP at {1e-9 / throughput.ExactFlopSeconds:F0} GFLOP/s = {Milliseconds(exactSeconds)}"));

        (int Degree, long Rank)? size = PolynomialAttention.Size(request.Range, shape.HeadDim, request.RelativeError);
        int? degree = size?.Degree;
        long? rank = size?.Rank;
        PlanCandidate poly;
        if (size is not (int g, long r))
        {
            poly = new PlanCandidate(AttentionMethod.Polynomial, false, double.PositiveInfinity, string.Create(inv,
                $"polynomial: refused, no polynomial of degree <= {ExpPolynomial.MaxDegree} reaches relative error {NumberText.Format(request.RelativeError, 2)} on [-R, R] with R = {NumberText.Format(request.Range, 4)} (the entries are not bounded enough)"));
        }
        else if (r > maxRank)
        {
            poly = new PlanCandidate(AttentionMethod.Polynomial, false, double.PositiveInfinity, string.Create(inv,
                $"polynomial: refused, R = {NumberText.Format(request.Range, 4)} at eps {NumberText.Format(request.RelativeError, 2)} needs degree {g}, r = C(d+g, g) = {r} features, over the budget of {maxRank}"));
        }
        else if (WorkingBytes(r, shape.ValueDim, throughput.Threads) is double memory && memory > maxMemory)
        {
            poly = new PlanCandidate(AttentionMethod.Polynomial, false, double.PositiveInfinity, string.Create(inv,
                $"polynomial: refused, degree {g} with r = {r} features needs {memory / (1 << 20):F0} MiB of working memory, over the {maxMemory / (1 << 20)} MiB budget"));
        }
        else
        {
            double flops = PolynomialAttention.PredictedFlops(shape, r);
            double seconds = throughput.PolynomialSeconds(shape, r) + (request.Causal ? DiagonalFlops(shape, g) / throughput.DiagonalFlopsPerSecond : 0);
            poly = new PlanCandidate(AttentionMethod.Polynomial, true, seconds, string.Create(inv,
                $"polynomial: degree {g}, r = {r} features, {NumberText.Format(flops / 1e9)} GFLOP at a measured {throughput.PolynomialRate(r) / 1e9:F0} GFLOP/s{(request.Causal ? " plus the causal diagonal blocks" : string.Empty)} = {Milliseconds(seconds)}, certified to 2 eps/(1-eps) max|V|"));
        }

        var sketch = new PlanCandidate(AttentionMethod.Sketch, false, double.PositiveInfinity,
            "sketch: not chosen for softmax, it approximates degree-4 polynomial attention with a statistical error and no certificate (run it explicitly with --method sketch)");

        AttentionPlan Choose(AttentionMethod method, string why) => new(method, why, degree, rank, [exact, poly, sketch]);
        if (poly.Feasible && poly.PredictedSeconds < exactSeconds)
        {
            return Choose(AttentionMethod.Polynomial, string.Create(inv,
                $"polynomial: predicted {exactSeconds / poly.PredictedSeconds:F1}x faster than exact ({Milliseconds(poly.PredictedSeconds)} vs {Milliseconds(exactSeconds)}), within the certificate"));
        }

        return Choose(AttentionMethod.Exact, poly.Feasible
            ? string.Create(inv, $"exact: predicted faster than the polynomial method ({Milliseconds(exactSeconds)} vs {Milliseconds(poly.PredictedSeconds)}) at this n")
            : $"exact: the polynomial method is refused here ({poly.Reason})");
    }

    /// <summary>Flops of the causal path's direct diagonal blocks: about 64 visible keys per query, 2 (d + g + dv + 1) each.</summary>
    private static double DiagonalFlops(AttentionShape shape, int degree) =>
        (double)shape.BatchSize * shape.HeadCount * shape.QueryCount * (FactorisedAttention.Block / 2.0) * 2 * (shape.HeadDim + degree + shape.ValueDim + 1);

    private static double FlopCountExact(AttentionShape shape, bool causal) =>
        FlopCount.ExactAttention(shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, causal);

    /// <summary>Per thread a feature block (r x 128 doubles) and up to 4 partial states (r x (dv + 1)), plus the running state.</summary>
    private static double WorkingBytes(long rank, int valueDim, int threads) =>
        8.0 * rank * ((threads * (FactorisedAttention.Block + (4.0 * (valueDim + 3)))) + valueDim + 3);

    private static string Milliseconds(double seconds) => (seconds >= 0.1 ? (seconds * 1e3).ToString("F0", CultureInfo.InvariantCulture) : NumberText.Format(seconds * 1e3)) + " ms";

    private static double Best(Action run)
    {
        run(); // warm-up (and JIT)
        double best = double.PositiveInfinity;
        for (int i = 0; i < 3; i++)
        {
            long start = Stopwatch.GetTimestamp();
            run();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }

        return best;
    }
}
