using System.Globalization;
using System.Text;
using FastAttention.Lab.Reports;

namespace FastAttention.Lab;

/// <summary><c>fastattn experiment tensor</c>: Alman–Song's higher-order attention claims.</summary>
public static partial class Experiments
{
    /// <summary>
    /// (a) Exact tensor attention's n^3 time against the polynomial method's near-linear time (d = 4, entries in
    /// [-1, 1], scale 1/d), with the crossover; (b) the error reachable within a fixed flop budget as the entry
    /// bound B sweeps across cbrt(ln n) (order 3) and (ln n)^(1/4) (order 4); (c) Match3: one head of tensor
    /// attention with hand-built Fourier features decides, for every position, whether some pair sums with it
    /// to 0 mod M.
    /// </summary>
    private static ExperimentReport Tensor(Context s)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine("# Tensor attention: cubic exact cost, near-linear polynomial method, and what it buys (Alman & Song)");
        md.AppendLine();
        md.AppendLine("**Claims** (\"How to Capture Higher-order Correlations?\"): tensor attention over pairs of keys,");
        md.AppendLine("softmax(s <q_i, k1_j1 o k2_j2>) applied to v1_j1 o v2_j2, costs n^3 naively; with entries bounded by o(cbrt(log n)) it");
        md.AppendLine("can be approximated in n^(1+o(1)) time, while entries of Omega(cbrt(log n)) force n^(3-o(1)) (SETH); order k has the");
        md.AppendLine("threshold (log n)^(1/k), so higher orders admit smaller entries. And it captures triple-wise correlations that pairwise");
        md.AppendLine("attention cannot express in one head, such as Match3.");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"{s.MachineLine} Rerun: `fastattn experiment tensor{(s.Full ? " --full" : string.Empty)} --out DIR`."));
        md.AppendLine();
        var plots = new Dictionary<string, SvgPlot>();
        var claims = new List<Claim>();
        TensorTiming(s, md, plots, claims);
        TensorBudget(s, md, plots, claims);
        TensorMatch3(s, md, plots, claims);
        return new ExperimentReport("tensor", md.ToString(), plots, claims);
    }

    private static void TensorTiming(Context s, StringBuilder md, Dictionary<string, SvgPlot> plots, List<Claim> claims)
    {
        var inv = CultureInfo.InvariantCulture;
        const int D = 4;
        int exactLargest = s.Full ? 8192 : 2048, polyLargest = s.Full ? 131072 : 32768;
        var exactPoints = new List<(double N, double Seconds)>();
        var polyPoints = new List<(double N, double Seconds)>();
        var rows = new StringBuilder();
        rows.AppendLine("| n | exact ms | polynomial ms | exact / polynomial | degree | r | certificate |");
        rows.AppendLine("|---|---|---|---|---|---|---|");
        int? crossover = null;
        for (int n = 128; n <= polyLargest; n *= 2)
        {
            var shape = new TensorAttentionShape(1, n, n, D, D);
            var random = new Random(s.Seed + n);
            float[] q = Uniform(random, shape.QueryLength, 1);
            ReadOnlyMemory<float>[] k = [Uniform(random, shape.KeyLength, 1), Uniform(random, shape.KeyLength, 1)];
            ReadOnlyMemory<float>[] v = [Uniform(random, shape.ValueLength, 1), Uniform(random, shape.ValueLength, 1)];
            var output = new float[shape.OutputLength];
            PolynomialCertificate? certificate = null;
            var options = new PolynomialAttentionOptions { RelativeError = 1e-3, MaxDegreeOfParallelism = s.Threads };
            double poly = s.Median(() => certificate = TensorAttention.ComputePolynomial(q, k, v, shape, output, options), 3);
            polyPoints.Add((n, poly));
            double? exact = null;
            if (n <= exactLargest)
            {
                exact = s.Median(() => TensorAttention.Compute(q, k, v, shape, output, new TensorAttentionOptions { MaxDegreeOfParallelism = s.Threads }), n <= 1024 ? 3 : 1);
                exactPoints.Add((n, exact.Value));
                crossover = exact > poly ? crossover ?? n : null;
            }

            rows.AppendLine(string.Create(inv, $"| {n} | {(exact is double e ? (e * 1e3).ToString("F2", inv) : "-")} | {poly * 1e3:F2} | {(exact is double x ? (x / poly).ToString("F0", inv) + "x" : "-")} | {certificate!.Degree} | {certificate.Rank} | {NumberText.Format(certificate.OutputBound)} |"));
            s.Log.WriteLine(string.Create(inv, $"tensor timing n={n}: exact {(exact is double y ? $"{y * 1e3:F1} ms" : "-")}, polynomial {poly * 1e3:F2} ms (degree {certificate.Degree}, r {certificate.Rank})"));
        }

        var plot = new SvgPlot { Title = "Tensor attention (order 3, d = 4): time against n", XLabel = "n", YLabel = "seconds", LogX = true, LogY = true };
        plot.Series.Add(new PlotSeries("exact (n^3)", exactPoints));
        plot.Series.Add(new PlotSeries("polynomial method, eps 0.001", polyPoints));
        plots["tensor-time.svg"] = plot;
        (double N, double Seconds) last = exactPoints[^1];
        double polyAtLast = polyPoints.First(p => p.N == last.N).Seconds;
        md.AppendLine("## (a) Exact n^3 against the near-linear polynomial method");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Order 3, d = {D}, Q, K1, K2, V1, V2 uniform in [-1, 1], scale 1/d, eps = 0.001; median of 3 runs (1 for the largest exact runs). The exact kernel is run up to n = {exactLargest}; the polynomial method up to n = {polyLargest}. **Crossover**: the polynomial method is faster from n = {(crossover is int c ? c.ToString(inv) : "beyond the sweep")} on; at n = {last.N} it is **{Faster(last.Seconds, polyAtLast)}** ({last.Seconds * 1e3:F0} ms against {polyAtLast * 1e3:F2} ms)."));
        md.AppendLine();
        md.AppendLine("![Seconds per call against n on log-log axes, where a slope of 3 is n^3 and a slope of 1 near-linear: compare the slopes of the exact kernel and of the polynomial method; the vertical gap between them is the speed-up.](tensor-time.svg)");
        md.AppendLine();
        md.Append(rows);
        md.AppendLine();

        // Growth exponents from the largest sizes (the small ones are dominated by fixed costs).
        double exactSlope = LogLogSlope(exactPoints.TakeLast(3)), polySlope = LogLogSlope(polyPoints.TakeLast(4));
        claims.Add(new(Sources.Tensor,
            "Exact tensor attention costs n^3, while with bounded entries the polynomial method runs in near-linear time.",
            string.Create(inv, $"exact time grows like n^{exactSlope:F2} (n = {exactPoints[^3].N}..{last.N}), the polynomial method's like n^{polySlope:F2} (n = {polyPoints[^4].N}..{polyPoints[^1].N}); {Faster(last.Seconds, polyAtLast)} at n = {last.N}."),
            Claim.Of(exactSlope >= 2.5, polySlope <= 1.3)));
    }

    private static void TensorBudget(Context s, StringBuilder md, Dictionary<string, SvgPlot> plots, List<Claim> claims)
    {
        var inv = CultureInfo.InvariantCulture;
        const int D = 4;
        double[] ratios = [0.2, 0.35, 0.5, 0.65, 0.8, 1.0, 1.2, 1.5];
        var plot = new SvgPlot { Title = "Error within a fixed flop budget (d = 4)", XLabel = "B / (ln n)^(1/k)", YLabel = "max |error| vs exact kernel", LogY = true };
        plot.References.Add(new PlotReference(1, "threshold", Vertical: true));
        var rows = new StringBuilder();
        rows.AppendLine("| order k | n | B | B / (ln n)^(1/k) | R | degree in budget | r | max error | certificate |");
        rows.AppendLine("|---|---|---|---|---|---|---|---|---|");
        var outcomes = new List<(int Order, double Below, double At, bool Steep)>();
        foreach ((int order, int n) in new[] { (3, s.Full ? 1024 : 512), (4, s.Full ? 96 : 64) })
        {
            double threshold = Math.Pow(Math.Log(n), 1.0 / order);
            var shape = new TensorAttentionShape(1, n, n, D, D, order);
            const int Budget = BudgetDegree; // r = C(d + g, g) features whatever B is: a fixed cost per row
            var points = new List<(double X, double Y)>();
            foreach (double ratio in ratios)
            {
                double b = ratio * threshold;
                var random = new Random(s.Seed + (order * 1000) + (int)(ratio * 100));
                float[] q = Uniform(random, shape.QueryLength, b);
                ReadOnlyMemory<float>[] k = [.. Enumerable.Range(0, order - 1).Select(_ => (ReadOnlyMemory<float>)Uniform(random, shape.KeyLength, b))];
                ReadOnlyMemory<float>[] v = [.. Enumerable.Range(0, order - 1).Select(_ => (ReadOnlyMemory<float>)Uniform(random, shape.ValueLength, 1))];
                var exact = new float[shape.OutputLength];
                TensorAttention.Compute(q, k, v, shape, exact, new TensorAttentionOptions { MaxDegreeOfParallelism = s.Threads });
                double range = TensorAttention.RangeBound(q, k, D, 1.0 / D);

                int degree = Budget;
                double? error = null, bound = null;
                try
                {
                    var output = new float[shape.OutputLength];
                    PolynomialCertificate certificate = TensorAttention.ComputePolynomial(q, k, v, shape, output, new PolynomialAttentionOptions { Degree = degree, MaxDegreeOfParallelism = s.Threads });
                    error = output.Select((x, i) => (double)Math.Abs(x - exact[i])).Max();
                    bound = certificate.OutputBound;
                }
                catch (ArgumentOutOfRangeException)
                {
                    // The degree that fits the budget has relative error >= 1 on [-R, R]: no useful approximation.
                }

                points.Add((ratio, error ?? double.NaN));
                rows.AppendLine(string.Create(inv, $"| {order} | {n} | {b:F3} | {ratio} | {range:F3} | {degree} | {PolynomialAttention.FeatureCount(D, degree)} | {(error is double e ? NumberText.Format(e) : "no approximation (P's error >= 1)")} | {Sci(bound)} |"));
                s.Log.WriteLine(string.Create(inv, $"tensor budget order={order} n={n} B={b:F3} ({ratio}): R={range:F3}, degree {degree}, error {(error is double x ? NumberText.Format(x) : "-")}"));
            }

            plot.Series.Add(new PlotSeries(string.Create(inv, $"order {order}, n = {n}"), points) { Family = $"order {order}", Style = $"n = {n}" });
            double below = points[0].Y;
            bool steep = below <= 1e-3 && points.Where(p => p.X >= 1).All(p => double.IsNaN(p.Y) || p.Y >= 100 * below);
            outcomes.Add((order, below, points.Where(p => p.X >= 1).Select(p => p.Y).DefaultIfEmpty(double.NaN).First(), steep));
        }

        claims.Add(new(Sources.Tensor,
            "Below the order-k threshold (log n)^(1/k) a fixed polynomial budget approximates well; through it the error climbs steeply (and R <= B^k makes higher orders harder at the same B).",
            string.Join("; ", outcomes.Select(x => string.Create(inv, $"order {x.Order}: error {NumberText.Format(x.Below)} at B/threshold = {ratios[0]}, {(double.IsNaN(x.At) ? "no approximation" : NumberText.Format(x.At))} at 1"))) + ".",
            Claim.Of([.. outcomes.Select(x => x.Steep)])));

        plots["tensor-budget.svg"] = plot;
        md.AppendLine("## (b) Error within a fixed compute budget as the entries grow");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"d = {D}, scale 1/d, Q and K_t uniform in [-B, B], V_t in [-1, 1]; B is swept across the order-k threshold (ln n)^(1/k)"));
        md.AppendLine(string.Create(inv, $"(cbrt(ln n) for order 3, (ln n)^(1/4) for order 4). The polynomial method gets a fixed compute budget: degree {BudgetDegree}, i.e."));
        md.AppendLine(string.Create(inv, $"r = C({D + BudgetDegree}, {BudgetDegree}) = {PolynomialAttention.FeatureCount(D, BudgetDegree)} features, O(n r d) work whatever B is; the error is measured against the exact kernel on every row."));
        md.AppendLine("R <= B^k grows with the order, so at the same B / threshold the fixed degree covers less of the range. Measured:");
        md.AppendLine(string.Join("; ", outcomes.Select(x => string.Create(inv,
            $"order {x.Order}: error {NumberText.Format(x.Below)} at B/threshold = {ratios[0]}, {(double.IsNaN(x.At) ? "no approximation" : NumberText.Format(x.At))} at the threshold ({(x.Steep ? "a steep climb" : "not the steep climb the claim expects")})"))) + ".");
        md.AppendLine();
        md.AppendLine("![Error within a fixed polynomial budget as the entries grow toward the order-k threshold (the vertical line), a colour per order k, a dash per n: low and flat well below the threshold, a steep climb (or no approximation: the line ends) through it.](tensor-budget.svg)");
        md.AppendLine();
        md.Append(rows);
        md.AppendLine();
    }

    private static void TensorMatch3(Context s, StringBuilder md, Dictionary<string, SvgPlot> plots, List<Claim> claims)
    {
        var inv = CultureInfo.InvariantCulture;
        const int M = 32;
        int[] lengths = s.Full ? [32, 64, 128, 256] : [32, 64, 128];
        double[] lambdas = [30, 100, 300, 1000, 3000, 10000];
        var plot = new SvgPlot { Title = "Match3 with one head of tensor attention (M = 32)", XLabel = "lambda (score scale of the Fourier features)", YLabel = "accuracy", LogX = true };
        var rows = new StringBuilder();
        rows.AppendLine("| n | lambda | accuracy | positions with a match | max score |");
        var best = new List<(int N, double Accuracy)>();
        rows.AppendLine("|---|---|---|---|---|");
        foreach (int n in lengths)
        {
            var random = new Random(s.Seed + n);
            // Tokens from a random alphabet of 4 residues, so that some positions have a matching pair and some do
            // not (with uniform tokens nearly every position matches once n^2 exceeds M). Seeds are tried in turn
            // until both answers occur.
            int[] x;
            bool[] truth;
            do
            {
                int[] alphabet = [.. Enumerable.Range(0, 4).Select(_ => random.Next(M))];
                x = [.. Enumerable.Range(0, n).Select(_ => alphabet[random.Next(alphabet.Length)])];
                truth = Match3Truth(x, M);
            }
            while (truth.All(t => t) || !truth.Any(t => t));

            var points = new List<(double X, double Y)>();
            foreach (double lambda in lambdas)
            {
                double accuracy = Match3Accuracy(x, truth, lambda, M, s.Threads);
                points.Add((lambda, accuracy));
                rows.AppendLine(string.Create(inv, $"| {n} | {lambda} | {accuracy:P1} | {truth.Count(t => t)} of {n} | {lambda:F0} |"));
                s.Log.WriteLine(string.Create(inv, $"match3 n={n} lambda={lambda}: accuracy {accuracy:P1}"));
            }

            plot.Series.Add(new PlotSeries($"n = {n}", points));
            best.Add((n, points[^1].Y));
        }

        claims.Add(new(Sources.Tensor,
            "One head of tensor attention solves Match3 (a triple-wise task one pairwise head cannot express).",
            string.Create(inv, $"accuracy at lambda = {lambdas[^1]}: {string.Join(", ", best.Select(b => $"{b.Accuracy:P0} (n = {b.N})"))}."),
            Claim.Of([.. best.Select(b => b.Accuracy == 1.0)])));

        plot.References.Add(new PlotReference(1, "perfect"));
        plots["tensor-match3.svg"] = plot;
        md.AppendLine("## (c) Match3: a triple-wise task for one head of tensor attention");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Tokens x_i in Z_{M}, drawn from a random alphabet of 4 residues (redrawn until both answers occur; with uniform tokens nearly every position matches); the question at every position i: is there a pair (j1, j2) with x_i + x_j1 + x_j2 = 0 (mod {M})?"));
        md.AppendLine("Pairwise attention scores one key at a time, so one head cannot express this; a tensor head can, with hand-built Fourier");
        md.AppendLine("features (d = 5, scale 1): with a = 2 pi x_i / M and b, c likewise for x_j1, x_j2,");
        md.AppendLine("q = lambda [cos a, -cos a, -sin a, -sin a, c0], k1 = [cos b, sin b, cos b, sin b, 0], k2 = [cos c, sin c, sin c, cos c, 0],");
        md.AppendLine("so <q, k1 o k2> = lambda cos(a + b + c), largest exactly when the triple sums to 0 mod M. A sentinel token (index 0 of both");
        md.AppendLine("key matrices, feature 5 set to 1 in both) scores lambda c0 with c0 = (1 + cos(2 pi / M)) / 2, between a match and the best");
        md.AppendLine("non-match; values are 1 for real pairs and 0 for any pair holding the sentinel as j1, so the output is the share of weight on");
        md.AppendLine("real pairs: near 1 when a match exists, near 0 when the sentinel wins. The head answers 'yes' when the output exceeds 1/2;");
        md.AppendLine("accuracy is against brute force. It needs lambda (1 - cos(2 pi / M)) / 2 well above ln(n^2): entries far beyond the");
        md.AppendLine("bounded regime, where part (b) measures how the polynomial method fares; the exact kernel has no such limit.");
        md.AppendLine();
        md.AppendLine("![Match3 accuracy of one head of tensor attention against the score scale lambda, one colour per n: it reaches the dashed line (perfect) once lambda is large enough for every n.](tensor-match3.svg)");
        md.AppendLine();
        md.Append(rows);
    }

    /// <summary>The fixed polynomial degree of part (b)'s compute budget.</summary>
    private const int BudgetDegree = 6;

    /// <summary>"12x faster" or "1.5x slower": the polynomial method against the exact kernel, stated as measured.</summary>
    private static string Faster(double exactSeconds, double polySeconds) => exactSeconds >= polySeconds
        ? string.Create(CultureInfo.InvariantCulture, $"{exactSeconds / polySeconds:F0}x faster")
        : string.Create(CultureInfo.InvariantCulture, $"{polySeconds / exactSeconds:F1}x slower");

    /// <summary>Brute force: does some pair (j1, j2) give x_i + x_j1 + x_j2 = 0 mod M?</summary>
    private static bool[] Match3Truth(int[] x, int m)
    {
        var present = new bool[m];
        foreach (int value in x)
        {
            present[value] = true;
        }

        return [.. x.Select(xi => Enumerable.Range(0, m).Any(a => present[a] && present[(((-xi - a) % m) + (2 * m)) % m]))];
    }

    /// <summary>One tensor head on the Match3 construction; the fraction of positions it answers correctly.</summary>
    private static double Match3Accuracy(int[] x, bool[] truth, double lambda, int m, int threads)
    {
        int n = x.Length, tokens = n + 1; // index 0 is the sentinel
        const int D = 5;
        double c0 = (1 + Math.Cos(2 * Math.PI / m)) / 2;
        var q = new float[n * D];
        var k1 = new float[tokens * D];
        var k2 = new float[tokens * D];
        var v1 = new float[tokens];
        var v2 = new float[tokens];
        for (int i = 0; i < n; i++)
        {
            double a = 2 * Math.PI * x[i] / m;
            float[] row = [(float)(lambda * Math.Cos(a)), (float)(-lambda * Math.Cos(a)), (float)(-lambda * Math.Sin(a)), (float)(-lambda * Math.Sin(a)), (float)(lambda * c0)];
            row.CopyTo(q, i * D);
            float cb = (float)Math.Cos(a), sb = (float)Math.Sin(a);
            new[] { cb, sb, cb, sb, 0f }.CopyTo(k1, (i + 1) * D);
            new[] { cb, sb, sb, cb, 0f }.CopyTo(k2, (i + 1) * D);
            v1[i + 1] = 1;
            v2[i + 1] = 1;
        }

        k1[D - 1] = 1; // the sentinel: feature 5 only
        k2[D - 1] = 1;
        v2[0] = 1;
        var shape = new TensorAttentionShape(1, n, tokens, D, 1);
        var output = new float[n];
        TensorAttention.Compute(q, [k1, k2], [v1, v2], shape, output, new TensorAttentionOptions { Scale = 1f, MaxDegreeOfParallelism = threads });
        return Enumerable.Range(0, n).Count(i => (output[i] > 0.5f) == truth[i]) / (double)n;
    }
}
