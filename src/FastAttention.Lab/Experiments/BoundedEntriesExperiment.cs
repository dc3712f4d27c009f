using System.Globalization;
using System.Text;
using FastAttention.Lab.Reports;
using FastAttention.Polynomial;

namespace FastAttention.Lab;

/// <summary>The bounded-entries experiment (Alman &amp; Song's transition).</summary>
public static partial class Experiments
{
    /// <summary>One (n, B) point of the bounded-entries sweep.</summary>
    private sealed record Point(int N, int D, double B, double Ratio, double Range, double ExactSeconds,
        int? Degree, long Rank, double? Seconds, double? Error, double? Bound, string Note,
        int? BudgetDegree, double? BudgetSeconds, double? BudgetError);

    /// <summary>
    /// Alman–Song's transition: for n = 2^10 .. 2^16 (quick: 2^10, 2^12, 2^14), d = log2 n, scale 1/d, entries
    /// uniform in [-B, B] with B swept across sqrt(ln n): (a) the polynomial method's time to reach a
    /// certified error of 1/n against the exact kernel's time, and (b) the error it reaches within the exact
    /// kernel's time. Errors are measured in float64 on 128 sampled query rows.
    /// </summary>
    private static ExperimentReport BoundedEntries(Context s)
    {
        int[] ns = s.Full ? [1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16] : [1 << 10, 1 << 12, 1 << 14];
        double[] ratios = [0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3];
        MethodThroughput machine = AttentionPlanner.Calibrate(s.Threads);
        var points = new List<Point>();
        foreach (int n in ns)
        {
            int d = (int)Math.Round(Math.Log2(n));
            double threshold = Math.Sqrt(Math.Log(n));
            var shape = AttentionShape.SingleHead(n, d);
            var random = new Random(s.Seed + n);
            float[] v = Uniform(random, shape.ValueLength, 1);
            int[] rows = [.. Enumerable.Range(0, 128).Select(_ => random.Next(n))];
            float scale = 1f / d;
            double exactSeconds = double.NaN;
            foreach (double ratio in ratios)
            {
                double b = ratio * threshold;
                float[] q = Uniform(random, shape.QueryLength, b), k = Uniform(random, shape.KeyLength, b);
                var output = new float[shape.OutputLength];
                if (double.IsNaN(exactSeconds))
                {
                    exactSeconds = s.Median(() => ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Scale = scale, MaxDegreeOfParallelism = s.Threads }), 3);
                }

                double range = PolynomialAttention.RangeBound(q, k, d, scale);
                double[][] reference = [.. rows.Select(i => ReferenceRow(q, k, v, shape, i, scale))];
                double Error(float[] o) => rows.Select((i, x) => Enumerable.Range(0, d).Max(c => Math.Abs(o[(i * d) + c] - reference[x][c]))).Max();

                // (a) The certified error 1/n: 2 eps / (1 - eps) max|V| <= 0.9 / n leaves room for rounding.
                double maxV = v.Max(Math.Abs);
                double eps = 0.9 / ((2 * n * maxV) + 0.9);
                int? degree = null;
                long rank = 0;
                double? seconds = null, error = null, bound = null;
                string note = string.Empty;
                try
                {
                    degree = ExpPolynomial.Fit(range, eps).Degree;
                    rank = PolynomialAttention.FeatureCount(d, degree.Value);
                    double predicted = Predict(machine, shape, rank);
                    if (rank > PolynomialAttention.DefaultMaxRank || predicted > 10 * exactSeconds)
                    {
                        note = string.Create(CultureInfo.InvariantCulture, $"not run: r = {rank}, predicted {predicted / exactSeconds:F0}x exact");
                    }
                    else
                    {
                        PolynomialCertificate? certificate = null;
                        var options = new PolynomialAttentionOptions { Scale = scale, RelativeError = eps, MaxDegreeOfParallelism = s.Threads };
                        seconds = s.Median(() => certificate = PolynomialAttention.Compute(q, k, v, shape, output, options), predicted < 0.2 ? 3 : 1);
                        error = Error(output);
                        bound = certificate!.OutputBound;
                    }
                }
                catch (ArgumentOutOfRangeException)
                {
                    note = "no polynomial reaches eps on [-R, R] in double";
                }

                // (b) The best degree whose predicted time fits in the exact kernel's time.
                int? budgetDegree = null;
                double? budgetSeconds = null, budgetError = null;
                for (int g = ExpPolynomial.MaxDegree; g >= 1; g--)
                {
                    long r = PolynomialAttention.FeatureCount(d, g);
                    if (r <= PolynomialAttention.DefaultMaxRank && Predict(machine, shape, r) <= exactSeconds)
                    {
                        try
                        {
                            var options = new PolynomialAttentionOptions { Scale = scale, Degree = g, MaxDegreeOfParallelism = s.Threads };
                            budgetSeconds = s.Median(() => PolynomialAttention.Compute(q, k, v, shape, output, options), 1);
                            budgetError = Error(output);
                            budgetDegree = g;
                        }
                        catch (ArgumentOutOfRangeException)
                        {
                            // Degree g's relative error on [-R, R] is >= 1: nothing within the budget.
                        }

                        break;
                    }
                }

                var point = new Point(n, d, b, ratio, range, exactSeconds, degree, rank, seconds, error, bound, note, budgetDegree, budgetSeconds, budgetError);
                points.Add(point);
                s.Log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"n={n} d={d} B={b:F3} (B/sqrt(ln n)={ratio}) R={range:F3}: exact {exactSeconds * 1e3:F2} ms; to 1/n: {(seconds is double t ? $"degree {degree}, r={rank}, {t * 1e3:F2} ms, error {NumberText.Format(error, "-")} <= {NumberText.Format(bound, "-")}" : note)}; within exact's time: {(budgetError is double e ? $"degree {budgetDegree}, error {NumberText.Format(e)}" : "nothing fits")}"));
            }
        }

        return BoundedEntriesReport(points, machine, s);
    }

    private static ExperimentReport BoundedEntriesReport(List<Point> points, MethodThroughput machine, Context s)
    {
        var time = new SvgPlot
        {
            Title = "Polynomial method: time to certified error 1/n",
            XLabel = "B / sqrt(ln n)   (entries uniform in [-B, B], d = log2 n, scale 1/d)",
            YLabel = "time / exact kernel time",
            LogY = true,
        };
        var error = new SvgPlot
        {
            Title = "Polynomial method: error within the exact kernel's time",
            XLabel = "B / sqrt(ln n)",
            YLabel = "max |error| (128 sampled rows, vs float64)",
            LogY = true,
        };
        time.References.Add(new PlotReference(1, "exact kernel"));
        time.References.Add(new PlotReference(1, "B = sqrt(ln n)", Vertical: true));
        error.References.Add(new PlotReference(1, "B = sqrt(ln n)", Vertical: true));
        foreach (IGrouping<int, Point> group in points.GroupBy(p => p.N))
        {
            string label = $"n = 2^{(int)Math.Log2(group.Key)}";
            time.Series.Add(new PlotSeries(label, [.. group.Select(p => (p.Ratio, p.Seconds is double t ? t / p.ExactSeconds : double.NaN))]));
            error.Series.Add(new PlotSeries(label, [.. group.Select(p => (p.Ratio, p.BudgetError ?? double.NaN))]));
        }

        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("# Bounded entries: where the polynomial method stops paying (Alman & Song)");
        md.AppendLine();
        md.AppendLine("**Claim** (\"Fast Attention Requires Bounded Entries\"): with d = O(log n) and entries bounded by B = o(sqrt(log n)),");
        md.AppendLine("attention can be approximated to error 1/poly(n) in n^(1+o(1)) time; at B = Theta(sqrt(log n)) no truly subquadratic");
        md.AppendLine("algorithm exists (under SETH). The polynomial degree needed grows with R = max|s q.k| <= B^2, and the feature count");
        md.AppendLine("r = C(d + g, g) with it, so the method's cost should explode as B approaches sqrt(ln n).");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"**Setup**: n = {string.Join(", ", points.Select(p => p.N).Distinct().Select(n => $"2^{(int)Math.Log2(n)}"))}; d = log2 n; scale 1/d; Q, K uniform in [-B, B], V uniform in [-1, 1]; B = ratio x sqrt(ln n). "));
        md.AppendLine("Errors are the max absolute error over 128 sampled query rows against a float64 reference. (a) eps is chosen so the");
        md.AppendLine("certificate 2 eps/(1 - eps) max|V| is at most 0.9/n, the degree is the smallest Chebyshev degree reaching it, and the");
        md.AppendLine(string.Create(inv, $"run is skipped when r exceeds the {PolynomialAttention.DefaultMaxRank:N0}-feature budget or the calibrated cost model predicts more than 10x the exact"));
        md.AppendLine("kernel's time. (b) The degree is the largest whose predicted time fits in the exact kernel's time.");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"{s.MachineLine} Measured polynomial engine {machine.PolynomialFlopsPerSecond / 1e9:F0} GFLOP/s. Rerun: `fastattn experiment bounded-entries{(s.Full ? " --full" : string.Empty)} --out DIR`."));
        md.AppendLine();
        md.AppendLine("![Below the horizontal line the polynomial method reaches error 1/n faster than the exact kernel; a line ends where no feasible polynomial exists. Read where each n crosses the line as B grows toward the vertical line B = sqrt(ln n).](bounded-entries-time.svg)");
        md.AppendLine();
        md.AppendLine("![The smallest error the polynomial method reaches in the exact kernel's time, one colour per n: a steep climb as B approaches sqrt(ln n) (the vertical line) is the hardness transition; a line ends where nothing fits the budget.](bounded-entries-error.svg)");
        md.AppendLine();
        md.AppendLine("## Transition");
        md.AppendLine();
        md.AppendLine("| n | d | sqrt(ln n) | largest B/sqrt(ln n) where the method reaches 1/n faster than exact | speed-up there | first B/sqrt(ln n) where it is slower or infeasible |");
        md.AppendLine("|---|---|---|---|---|---|");
        foreach (IGrouping<int, Point> group in points.GroupBy(p => p.N))
        {
            Point? lastWin = group.LastOrDefault(p => p.Seconds < p.ExactSeconds);
            Point? firstLoss = group.FirstOrDefault(p => p.Seconds is not double t || t >= p.ExactSeconds);
            md.AppendLine(string.Create(inv, $"| 2^{(int)Math.Log2(group.Key)} | {group.First().D} | {Math.Sqrt(Math.Log(group.Key)):F2} | {(lastWin is null ? "none" : lastWin.Ratio.ToString(inv))} | {(lastWin is null ? "-" : $"{lastWin.ExactSeconds / lastWin.Seconds!.Value:F1}x")} | {(firstLoss is null ? "none in the sweep" : firstLoss.Ratio.ToString(inv))} |"));
        }

        md.AppendLine();
        md.AppendLine("## Every point");
        md.AppendLine();
        md.AppendLine("| n | B | B/sqrt(ln n) | R | exact ms | (a) degree | r | ms | error | certificate | (b) degree | ms | error |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (Point p in points)
        {
            md.AppendLine(string.Create(inv,
                $"| 2^{(int)Math.Log2(p.N)} | {p.B:F3} | {p.Ratio} | {p.Range:F3} | {p.ExactSeconds * 1e3:F2} | {p.Degree?.ToString(inv) ?? "-"} | {(p.Rank > 0 ? p.Rank.ToString(inv) : "-")} | {(p.Seconds is double t ? (t * 1e3).ToString("F2", inv) : p.Note)} | {Sci(p.Error)} | {Sci(p.Bound)} | {p.BudgetDegree?.ToString(inv) ?? "-"} | {(p.BudgetSeconds is double bt ? (bt * 1e3).ToString("F2", inv) : "-")} | {Sci(p.BudgetError)} |"));
        }

        md.AppendLine();
        md.AppendLine("## Reading it");
        md.AppendLine();
        md.AppendLine(Reading(points));
        return new ExperimentReport("bounded-entries", md.ToString(), new Dictionary<string, SvgPlot> { ["bounded-entries-time.svg"] = time, ["bounded-entries-error.svg"] = error }, BoundedEntriesClaims(points));
    }

    /// <summary>The "Reading it" paragraph, every statement computed from the points.</summary>
    private static string Reading(List<Point> points)
    {
        var inv = CultureInfo.InvariantCulture;
        var text = new List<string>();
        List<Point> certified = [.. points.Where(p => p.Error is not null && p.Bound is not null)];
        int within = certified.Count(p => p.Error <= p.Bound);
        text.Add(certified.Count == 0 ? "No run of (a) was measured against its certificate."
            : within == certified.Count ? string.Create(inv, $"All {certified.Count} measured errors of (a) are inside their certificates.")
            : string.Create(inv, $"{certified.Count - within} of {certified.Count} measured errors of (a) exceed their certificates."));

        List<Point> smallest = [.. points.GroupBy(p => p.N).Select(g => g.OrderBy(p => p.Ratio).First())];
        double?[] speedUps = [.. smallest.Select(p => p.Seconds is double t ? p.ExactSeconds / t : (double?)null)];
        text.Add(string.Create(inv, $"At the smallest B (B/sqrt(ln n) = {smallest[0].Ratio}) the method reaches 1/n ")
            + string.Join(", ", smallest.Select((p, i) => string.Create(inv, $"{(speedUps[i] is double x ? x >= 1 ? $"{x:F1}x faster than" : $"{1 / x:F1}x slower than" : "not at all within the limits, unlike")} exact attention at n = 2^{(int)Math.Log2(p.N)}")))
            + (speedUps.Length > 1 && speedUps.All(x => x is not null) && speedUps.Zip(speedUps.Skip(1), (a, b) => b > a).All(up => up)
                ? ": the advantage grows with n, as a cost linear in n against a quadratic one should."
                : "."));

        var losses = points.GroupBy(p => p.N).Select(g => (N: g.Key, Loss: g.OrderBy(p => p.Ratio).FirstOrDefault(p => p.Seconds is not double t || t >= p.ExactSeconds))).ToList();
        string where = string.Join(", ", losses.Select(l => string.Create(inv, $"{(l.Loss is null ? "beyond 1.3" : l.Loss.Ratio.ToString(inv))} at n = 2^{(int)Math.Log2(l.N)}")));
        text.Add(losses.All(l => l.Loss is { Ratio: < 1.0 })
            ? $"As B grows, the degree needed grows (roughly like B^2) and r = C(d + g, g) much faster, and the method falls behind the exact kernel, or becomes infeasible, before B = sqrt(ln n) at every n measured (B/sqrt(ln n) = {where}): at these sizes the practical threshold sits below the asymptotic one, because r with d = log2 n is large at any finite n."
            : $"The method first falls behind the exact kernel, or becomes infeasible, at B/sqrt(ln n) = {where}.");

        int largest = points.Max(p => p.N);
        List<Point> top = [.. points.Where(p => p.N == largest).OrderBy(p => p.Ratio)];
        Point? lastFinite = top.LastOrDefault(p => p.BudgetError is double);
        text.Add(top[0].BudgetError is double first && lastFinite is not null
            ? string.Create(inv, $"Within the exact kernel's time (plot 2), at n = 2^{(int)Math.Log2(largest)}, the reachable error goes from {Sci(first)} at B/sqrt(ln n) = {top[0].Ratio} to {Sci(lastFinite.BudgetError)} at {lastFinite.Ratio} ({NumberText.Format(lastFinite.BudgetError / first, "-", 2)} times larger){(top.Any(p => p.BudgetError is null && p.Ratio > top[0].Ratio) ? ", and at some larger B nothing fits at all" : string.Empty)}.")
            : string.Create(inv, $"Within the exact kernel's time (plot 2), at n = 2^{(int)Math.Log2(largest)}, no degree fits at the smallest B."));
        return string.Join(" ", text);
    }

    private static List<Claim> BoundedEntriesClaims(List<Point> points)
    {
        var inv = CultureInfo.InvariantCulture;
        int largest = points.Max(p => p.N);
        List<Point> top = [.. points.Where(p => p.N == largest).OrderBy(p => p.Ratio)];
        Point small = top[0];
        bool fast = small.Seconds is double t0 && t0 < small.ExactSeconds;
        var claims = new List<Claim>
        {
            new(Sources.BoundedEntries,
                "With entries bounded well below sqrt(log n), the polynomial method reaches error 1/n faster than exact attention.",
                string.Create(inv, $"n = 2^{(int)Math.Log2(largest)}, B/sqrt(ln n) = {small.Ratio}: {(small.Seconds is double t ? $"{t * 1e3:F2} ms against exact {small.ExactSeconds * 1e3:F2} ms ({small.ExactSeconds / t:F1}x)" : small.Note)}."),
                Claim.Of(fast)),
        };

        var losses = points.GroupBy(p => p.N).Select(g => (N: g.Key, Loss: g.OrderBy(p => p.Ratio).FirstOrDefault(p => p.Seconds is not double t || t >= p.ExactSeconds))).ToList();
        claims.Add(new(Sources.BoundedEntries,
            "As B approaches sqrt(log n) the method stops paying: it becomes slower than exact attention, or no feasible polynomial exists.",
            "first B/sqrt(ln n) where it is slower or infeasible: " + string.Join("; ", losses.Select(l => string.Create(inv, $"n = 2^{(int)Math.Log2(l.N)}: {(l.Loss is null ? "none up to 1.3" : l.Loss.Ratio.ToString(inv))}"))) + ".",
            Claim.Of([.. losses.Select(l => l.Loss is { Ratio: <= 1.0 })])));

        double? firstError = small.BudgetError;
        Point? lastFinite = top.LastOrDefault(p => p.BudgetError is double);
        bool none = top.Any(p => p.BudgetError is null && p.Ratio > small.Ratio);
        bool rises = firstError is double e0 && (none || (lastFinite?.BudgetError ?? 0) >= 100 * e0);
        claims.Add(new(Sources.BoundedEntries,
            "Within a fixed time budget the reachable error rises steeply as B grows toward sqrt(log n) (the hardness transition).",
            string.Create(inv, $"n = 2^{(int)Math.Log2(largest)}, error within the exact kernel's time: {Sci(firstError)} at B/sqrt(ln n) = {small.Ratio}, {(lastFinite is null ? "-" : $"{Sci(lastFinite.BudgetError)} at {lastFinite.Ratio}")}{(none ? ", nothing fits beyond" : string.Empty)}."),
            firstError is null ? Verdict.NotMeasured : Claim.Of(rises)));

        List<Point> certified = [.. points.Where(p => p.Error is not null && p.Bound is not null)];
        double worst = certified.Count == 0 ? double.NaN : certified.Max(p => p.Error!.Value / p.Bound!.Value);
        claims.Add(new(Sources.Library,
            "Every measured error of the polynomial method lies within its certificate.",
            string.Create(inv, $"{certified.Count(p => p.Error <= p.Bound)} of {certified.Count} runs within; largest error / certificate = {NumberText.Format(worst)}."),
            certified.Count == 0 ? Verdict.NotMeasured : Claim.Of(certified.All(p => p.Error <= p.Bound))));
        return claims;
    }
}
