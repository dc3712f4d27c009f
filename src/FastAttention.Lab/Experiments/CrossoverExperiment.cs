using System.Globalization;
using System.Text;
using FastAttention.Lab.Reports;

namespace FastAttention.Lab;

/// <summary>The crossover experiment: where the polynomial method starts to beat the exact kernel.</summary>
public static partial class Experiments
{
    /// <summary>
    /// Where the polynomial method starts to beat the exact kernel: entries uniform in [-1, 1], scale 1/d,
    /// d in {4, 8, 16}, eps in {1e-2, 1e-3, 1e-6}, n doubling from 256 (quick: to 16384; full: to 65536).
    /// Both methods are timed in the same run (median of 3); at the largest n the polynomial output is also
    /// checked against float64 on 128 sampled rows.
    /// </summary>
    private static ExperimentReport Crossover(Context s)
    {
        int largest = s.Full ? 1 << 16 : 1 << 14;
        int[] dims = [4, 8, 16];
        double[] targets = [1e-2, 1e-3, 1e-6];
        var inv = CultureInfo.InvariantCulture;
        var plot = new SvgPlot
        {
            Title = "Polynomial method vs exact kernel (entries in [-1, 1], scale 1/d)",
            XLabel = "n (queries = keys)",
            YLabel = "exact time / polynomial time",
            LogX = true,
            LogY = true,
        };
        plot.References.Add(new PlotReference(1, "break-even"));
        var table = new StringBuilder();
        table.AppendLine("| d | eps | degree | r | crossover n | speed-up at the largest n | largest n: exact ms | poly ms | measured error | certificate |");
        table.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        var outcomes = new List<(int D, double Eps, int? Crossover, double? Ratio, bool Certified)>();
        var detail = new StringBuilder();
        detail.AppendLine("| d | eps | n | exact ms | poly ms | exact / poly |");
        detail.AppendLine("|---|---|---|---|---|---|");
        foreach (int d in dims)
        {
            var exactTimes = new Dictionary<int, double>();
            var inputs = new Dictionary<int, (float[] Q, float[] K, float[] V)>();
            for (int n = 256; n <= largest; n *= 2)
            {
                var random = new Random(s.Seed + n + d);
                var shape = AttentionShape.SingleHead(n, d);
                inputs[n] = (Uniform(random, shape.QueryLength, 1), Uniform(random, shape.KeyLength, 1), Uniform(random, shape.ValueLength, 1));
                (float[] q, float[] k, float[] v) = inputs[n];
                var output = new float[shape.OutputLength];
                exactTimes[n] = s.Median(() => ExactAttention.Compute(q, k, v, shape, output, new ExactAttentionOptions { Scale = 1f / d, MaxDegreeOfParallelism = s.Threads }), 3);
            }

            foreach (double eps in targets)
            {
                var points = new List<(double N, double Ratio)>();
                int? crossover = null, degree = null;
                long rank = 0;
                string last = "-";
                double? lastRatio = null;
                bool certified = true;
                for (int n = 256; n <= largest; n *= 2)
                {
                    var shape = AttentionShape.SingleHead(n, d);
                    (float[] q, float[] k, float[] v) = inputs[n];
                    var output = new float[shape.OutputLength];
                    var options = new PolynomialAttentionOptions { Scale = 1f / d, RelativeError = eps, MaxDegreeOfParallelism = s.Threads };
                    PolynomialCertificate? certificate = null;
                    try
                    {
                        double seconds = s.Median(() => certificate = PolynomialAttention.Compute(q, k, v, shape, output, options), 3);
                        degree = certificate!.Degree;
                        rank = certificate.Rank;
                        double ratio = exactTimes[n] / seconds;
                        points.Add((n, ratio));
                        crossover = ratio > 1 ? crossover ?? n : null; // the first n from which it stays ahead
                        detail.AppendLine(string.Create(inv, $"| {d} | {NumberText.Format(eps, 1)} | {n} | {exactTimes[n] * 1e3:F2} | {seconds * 1e3:F2} | {ratio:F2} |"));
                        if (n == largest)
                        {
                            int[] rows = [.. Enumerable.Range(0, 128).Select(i => (int)((long)i * n / 128))];
                            double error = rows.Max(i => ReferenceRow(q, k, v, shape, i, 1.0 / d).Select((x, c) => Math.Abs(output[(i * d) + c] - x)).Max());
                            last = string.Create(inv, $"{ratio:F1}x | {exactTimes[n] * 1e3:F1} | {seconds * 1e3:F2} | {NumberText.Format(error)} | {NumberText.Format(certificate.OutputBound)}");
                            lastRatio = ratio;
                            certified = error <= certificate.OutputBound;
                            s.Log.WriteLine(string.Create(inv, $"d={d} eps={NumberText.Format(eps, 1)} n={n}: exact {exactTimes[n] * 1e3:F1} ms, poly {seconds * 1e3:F2} ms ({ratio:F1}x), degree {degree}, r={rank}, error {NumberText.Format(error)} <= {NumberText.Format(certificate.OutputBound)}"));
                        }
                    }
                    catch (ArgumentOutOfRangeException ex)
                    {
                        last = "refused: " + ex.Message.Split('.')[0].Split(';')[0];
                        break;
                    }
                }

                if (points.Count > 0)
                {
                    plot.Series.Add(new PlotSeries(string.Create(inv, $"d = {d}, eps = {NumberText.Format(eps, 1)}"), points) { Family = $"d = {d}", Style = NumberText.Format(eps, 1) });
                }

                outcomes.Add((d, eps, crossover, lastRatio, certified));

                table.AppendLine(string.Create(inv,
                    $"| {d} | {NumberText.Format(eps, 1)} | {degree?.ToString(inv) ?? "-"} | {(rank > 0 ? rank.ToString(inv) : "-")} | {(crossover is int c ? c.ToString(inv) : points.Count > 0 ? $"> {largest}" : "-")} | {last} |"));
            }
        }

        var md = new StringBuilder();
        md.AppendLine("# Crossover: where the polynomial method starts to beat the exact kernel");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Q, K, V uniform in [-1, 1], scale 1/d (so R = s max||q|| max||k|| is below 1), one head, n = nq = nk from 256 to {largest}. Both methods timed in the same run, median of 3. {s.MachineLine} 'Crossover n' is the smallest n of the sweep from which the polynomial method stays faster. At the largest n the output is checked against float64 on 128 rows. Rerun: `fastattn experiment crossover{(s.Full ? " --full" : string.Empty)} --out DIR`."));
        md.AppendLine();
        md.AppendLine("![Above the dashed break-even line the polynomial method is faster than the exact kernel; a colour is a head dimension d, a dash pattern an error target eps. Read the n at which each curve crosses the line.](crossover.svg)");
        md.AppendLine();
        md.Append(table);
        md.AppendLine();
        md.AppendLine("## Every timing");
        md.AppendLine();
        md.Append(detail);
        return new ExperimentReport("crossover", md.ToString(), new Dictionary<string, SvgPlot> { ["crossover.svg"] = plot }, CrossoverClaims(outcomes, largest));
    }

    private static List<Claim> CrossoverClaims(List<(int D, double Eps, int? Crossover, double? Ratio, bool Certified)> outcomes, int largest)
    {
        var inv = CultureInfo.InvariantCulture;
        var small = outcomes.Where(x => x.D <= 8 && x.Eps >= 1e-3).ToList();
        var claims = new List<Claim>
        {
            new(Sources.BoundedEntries,
                "For small heads with bounded entries the near-linear polynomial method overtakes quadratic exact attention as n grows (d <= 8, eps >= 0.001).",
                string.Join("; ", small.Select(x => string.Create(inv, $"d = {x.D}, eps = {NumberText.Format(x.Eps, 1)}: {(x.Crossover is int c ? $"faster from n = {c}, {x.Ratio:F1}x at n = {largest}" : $"not faster up to n = {largest}")}"))) + ".",
                Claim.Of([.. small.Select(x => x.Crossover is not null)])),
            new(Sources.Library,
                "The polynomial method's output is within its certificate at the largest n of every setting.",
                string.Create(inv, $"{outcomes.Count(x => x.Ratio is not null && x.Certified)} of {outcomes.Count(x => x.Ratio is not null)} settings checked against float64 on 128 rows are within."),
                Claim.Of([.. outcomes.Where(x => x.Ratio is not null).Select(x => x.Certified)])),
        };

        (int D, double Eps, int? Crossover, double? Ratio, bool Certified) goal = outcomes.FirstOrDefault(x => x.D == 8 && x.Eps == 1e-3);
        claims.Add(new(Sources.Library,
            "At n = 65536, d = 8, eps = 0.001 the polynomial method is at least 20x faster than the exact kernel.",
            largest < 65536 ? "not measured at this size: run with --full" : goal.Ratio is double g ? string.Create(inv, $"{g:F1}x at n = {largest}.") : "not measured: the polynomial method did not run at d = 8, eps = 0.001 and the largest n.",
            largest < 65536 || goal.Ratio is null ? Verdict.NotMeasured : Claim.Of(goal.Ratio >= 20)));
        return claims;
    }

    private static double Predict(MethodThroughput machine, AttentionShape shape, long rank) => machine.PolynomialSeconds(shape, rank);
}
