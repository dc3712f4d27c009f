using System.Globalization;

namespace FastAttention.Cli;

/// <summary><c>fastattn inspect</c>: shapes, entry bounds and the regime of the papers an input is in.</summary>
internal static class InspectCommand
{
    public static Command Command { get; } = new(
        "inspect",
        "shapes, entry bound B = max|entry|, max |scaled score|, and the bounded-entry regime of Q and K",
        [
            new("q", "Q.npy", "queries [n,d], [h,n,d] or [b,h,n,d] (required)"),
            new("k", "K.npy", "keys, same rank (required)"),
            new("scale", "S", "score scale s (default 1/sqrt(d))"),
            new("eps", "E", "target relative error for the polynomial-method estimate (default 1e-3)"),
            new("causal", null, "plan for causal attention"),
            new("dv", "DV", "value dimension to plan for (default d)"),
            new("threads", "T", "plan for this many threads (default: all cores)"),
            new("no-plan", null, "skip the plan (it measures this machine's kernels once, about 0.1 s)"),
            new("json", null, "print one JSON object"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        const string Undefined = "The entry bound, the score range and the plan are undefined for non-finite inputs.";
        string qPath = o.Required("inspect", "q"), kPath = o.Required("inspect", "k");
        float? scale = o.Float("scale");
        double eps = o.Double("eps", positive: true) ?? 1e-3;
        if (eps >= 1)
        {
            throw new UsageException($"inspect: --eps is a relative error and must be below 1; got {eps}");
        }

        int? dvOption = o.Int("dv", 1, 1 << 20);
        int threads = o.Threads() ?? 0;
        TensorData<float> q = TensorFiles.Load("q", qPath, Undefined);
        TensorData<float> k = TensorFiles.Load("k", kPath, Undefined);
        Progress.Current.Step("analysing Q and K");

        // K doubles as V here: only Q and K matter.
        AttentionShape shape = AttentionInputs.Shape(q, k, k);
        InputBounds bounds = InputAnalysis.Analyze(q.Data, k.Data, shape, scale);
        PolynomialEstimate poly = EstimatePolynomial(bounds.ScoreNormBound, shape.HeadDim, eps);
        AttentionPlan? plan = null;
        if (!o.Flag("no-plan"))
        {
            int dv = dvOption ?? shape.HeadDim;
            AttentionShape planShape = shape with { ValueDim = dv };
            plan = AttentionPlanner.Plan(new PlanRequest(planShape, bounds.ScoreNormBound, eps, o.Flag("causal")), AttentionPlanner.Calibrate(threads));
        }

        string regime = bounds.Regime == EntryRegime.Bounded
            ? "bounded: B <= sqrt(ln n), the polynomial method of Alman-Song applies"
            : "large: B > sqrt(ln n), beyond the bounded-entry threshold; use exact attention";

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                Json.WriteShape(w, "queryShape", q.Shape);
                Json.WriteShape(w, "keyShape", k.Shape);
                w.WriteNumber("n", bounds.TokenCount);
                w.WriteNumber("d", shape.HeadDim);
                w.WriteNumber("scale", bounds.Scale);
                w.WriteNumber("queryEntryBound", bounds.QueryEntryBound);
                w.WriteNumber("keyEntryBound", bounds.KeyEntryBound);
                w.WriteNumber("B", bounds.EntryBound);
                w.WriteNumber("sqrtLogN", bounds.Threshold);
                w.WriteNumber("BOverSqrtLogN", bounds.EntryBound / bounds.Threshold);
                w.WriteNumber("maxQueryNorm", bounds.MaxQueryNorm);
                w.WriteNumber("maxKeyNorm", bounds.MaxKeyNorm);
                w.WriteNumber("scoreNormBound", bounds.ScoreNormBound);
                if (bounds.MaxAbsScaledScore is double m)
                {
                    w.WriteNumber("maxAbsScaledScore", m);
                }
                else
                {
                    w.WriteNull("maxAbsScaledScore");
                }

                w.WriteString("regime", bounds.Regime.ToString().ToLowerInvariant());
                w.WriteStartObject("polynomial");
                w.WriteNumber("range", bounds.ScoreNormBound);
                w.WriteNumber("targetRelativeError", eps);
                if (poly.Degree is int g)
                {
                    w.WriteNumber("degree", g);
                    w.WriteNumber("rank", poly.Rank);
                }
                else
                {
                    w.WriteNull("degree");
                    w.WriteNull("rank");
                }

                w.WriteBoolean("feasible", poly.Feasible);
                w.WriteString("note", poly.Note);
                w.WriteEndObject();
                if (plan is not null)
                {
                    Json.WritePlan(w, plan);
                }
            });
            return ExitCode.Ok;
        }

        var inv = CultureInfo.InvariantCulture;
        stdout.WriteLine($"query  {q.ShapeText}   key {k.ShapeText}   n = {bounds.TokenCount}, d = {shape.HeadDim}, heads = {shape.HeadCount} (kv {shape.EffectiveKeyValueHeads})");
        stdout.WriteLine(string.Create(inv, $"entry bound B = max|entry| = {NumberText.Format(bounds.EntryBound, 5)}   (Q {NumberText.Format(bounds.QueryEntryBound, 5)}, K {NumberText.Format(bounds.KeyEntryBound, 5)})"));
        stdout.WriteLine(string.Create(inv, $"row norms     max||q|| = {NumberText.Format(bounds.MaxQueryNorm, 5)}, max||k|| = {NumberText.Format(bounds.MaxKeyNorm, 5)}"));
        stdout.WriteLine(string.Create(inv, $"scale s = {NumberText.Format(bounds.Scale, 5)}: max|s q.k| = {(bounds.MaxAbsScaledScore is double x ? NumberText.Format(x, 5) : $"(not computed: nq nk (d + 16) over heads exceeds {NumberText.Format(InputAnalysis.ExactScoreBudget, 2)})")}, bound s max||q|| max||k|| = {NumberText.Format(bounds.ScoreNormBound, 5)}"));
        stdout.WriteLine(string.Create(inv, $"threshold sqrt(ln n) = {NumberText.Format(bounds.Threshold, 4)};  B / sqrt(ln n) = {NumberText.Format(bounds.EntryBound / bounds.Threshold, 4)}"));
        stdout.WriteLine("regime: " + regime);
        stdout.WriteLine("polynomial method at eps " + NumberText.Format(eps) + ": " + poly.Note);
        if (plan is not null)
        {
            stdout.WriteLine("plan: " + plan.Explanation);
            foreach (PlanCandidate candidate in plan.Candidates)
            {
                stdout.WriteLine("  " + candidate.Reason);
            }
        }

        return ExitCode.Ok;
    }

    private sealed record PolynomialEstimate(int? Degree, long Rank, bool Feasible, string Note);

    /// <summary>What the polynomial method would need here: degree and feature count for the Cauchy–Schwarz range R.</summary>
    private static PolynomialEstimate EstimatePolynomial(double range, int d, double eps)
    {
        const long Budget = PolynomialAttention.DefaultMaxRank;
        var inv = CultureInfo.InvariantCulture;
        if (PolynomialAttention.Size(range, d, eps) is not (int degree, long rank))
        {
            return new PolynomialEstimate(null, 0, false, string.Create(inv, $"R = {NumberText.Format(range, 4)} is too wide for any polynomial to reach relative error {NumberText.Format(eps)}: use exact attention"));
        }

        bool feasible = rank <= Budget;
        string note = feasible
            ? string.Create(inv, $"R = {NumberText.Format(range, 4)} needs degree {degree} and r = C(d+g, g) = {rank} features (fastattn attend --method poly)")
            : string.Create(inv, $"R = {NumberText.Format(range, 4)} needs degree {degree}, i.e. r = C(d+g, g) = {rank} features, over the {Budget} budget: use exact attention");
        return new PolynomialEstimate(degree, rank, feasible, note);
    }
}
