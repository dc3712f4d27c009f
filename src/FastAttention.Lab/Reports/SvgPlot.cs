using System.Globalization;
using System.Security;
using System.Text;

namespace FastAttention.Lab.Reports;

/// <summary>One line of a plot: points (x, y), and optionally a band [low, high] around it.</summary>
/// <param name="Name">Legend text.</param>
/// <param name="Points">The points, drawn in order; non-finite (or, on a log axis, non-positive) points break the line.</param>
/// <param name="Band">Optional (x, low, high) for an error band, drawn shaded under the line.</param>
internal sealed record PlotSeries(string Name, IReadOnlyList<(double X, double Y)> Points, IReadOnlyList<(double X, double Low, double High)>? Band = null)
{
    /// <summary>The colour key: series of one family (say, one head dimension d) share a colour. Null: the series is its own family.</summary>
    public string? Family { get; init; }

    /// <summary>The line-style key for a second parameter (say, eps): series of one style share a dash pattern and marker shape. Null: solid, round markers.</summary>
    public string? Style { get; init; }
}

/// <summary>A horizontal or vertical reference line with a label.</summary>
/// <param name="Value">y for a horizontal line, x for a vertical one.</param>
/// <param name="Label">Text beside the line.</param>
/// <param name="Vertical">Whether the line is vertical.</param>
internal sealed record PlotReference(double Value, string Label, bool Vertical = false)
{
    /// <summary>The family of the series this line bounds (see <see cref="PlotSeries.Family"/>): drawn in its colour. Null: grey, for a line that belongs to no series.</summary>
    public string? Family { get; init; }
}

/// <summary>
/// A line plot written as a standalone SVG document, made to be read at the report's full width (960 px, text
/// 14-18 px): axes fitted to the data (a small margin, no empty decades), ticks with labels in the report's one
/// number format (decades on log axes, with 2 and 5 between them when the data span few; powers of two when the x
/// values are all powers of two; 1-2-5 steps on linear ones), a colour per series family (a colour-blind-safe
/// palette) and a dash pattern and marker shape per style, reference lines in the colour of the family they bound,
/// optional error bands, and the legend in rows under the axes. One quantity per figure: a second quantity gets a
/// figure of its own. No plotting package is available from this project's registry, so this component draws its own.
/// </summary>
internal sealed class SvgPlot
{
    private const double Width = 960, Left = 96, Right = 32, Top = 52, PlotHeight = 400, AxisBand = 64;
    private const double FontSize = 15, TickFontSize = 14, TitleFontSize = 18, LegendRow = 24;

    /// <summary>Okabe and Ito's colour-blind-safe palette (yellow left out: too pale on white), then three more distinct hues.</summary>
    private static readonly string[] Colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#882255", "#999933"];

    private static readonly string[] Dashes = ["", "9,5", "2,4", "12,4,3,4", "5,3"];

    private const string ReferenceGrey = "#666";

    /// <summary>A white outline under a label inside the axes, so it stays legible where a line crosses it.</summary>
    private const string Halo = " stroke=\"white\" stroke-width=\"4\" stroke-linejoin=\"round\" paint-order=\"stroke\"";

    public required string Title { get; init; }

    public required string XLabel { get; init; }

    public required string YLabel { get; init; }

    public bool LogX { get; init; }

    public bool LogY { get; init; }

    public List<PlotSeries> Series { get; } = [];

    public List<PlotReference> References { get; } = [];

    private double PlotWidth => Width - Left - Right;

    /// <summary>The colour of a family: families in order of first appearance, among the series and then the references.</summary>
    private string Color(string? family)
    {
        if (family is null)
        {
            return ReferenceGrey;
        }

        List<string> families = [.. Series.Select(s => s.Family ?? s.Name).Concat(References.Select(r => r.Family).OfType<string>()).Distinct()];
        return Colors[Math.Max(0, families.IndexOf(family)) % Colors.Length];
    }

    /// <summary>A style's dash and marker: null is solid and round; the named styles follow in order of first appearance (from solid when no series is unstyled).</summary>
    private int StyleIndex(string? style)
    {
        List<string> styles = [.. Series.Select(s => s.Style).OfType<string>().Distinct()];
        int first = Series.Any(s => s.Style is null) ? 1 : 0;
        return style is null ? 0 : (first + Math.Max(0, styles.IndexOf(style))) % Dashes.Length;
    }

    /// <summary>The legend's layout: entries in columns as wide as the longest name, rows under the x-axis title.</summary>
    private (int Columns, double ColumnWidth, int Rows) Legend()
    {
        double longest = Series.Select(s => TextWidth(s.Name, FontSize)).DefaultIfEmpty(0).Max() + 56;
        int columns = Math.Max(1, Math.Min(Series.Count, (int)(PlotWidth / longest)));
        return (columns, PlotWidth / columns, (Series.Count + columns - 1) / columns);
    }

    private double Height => Top + PlotHeight + AxisBand + (Legend().Rows * LegendRow) + 8;

    /// <summary>The SVG document.</summary>
    public string Render()
    {
        List<(double X, double Y)> points = [.. Series.SelectMany(s => s.Points
                .Concat(s.Band?.SelectMany(b => new (double X, double Y)[] { (b.X, b.Low), (b.X, b.High) }) ?? []))
            .Where(p => Usable(p.X, LogX) && Usable(p.Y, LogY))];
        List<double> xs = [.. points.Select(p => p.X).Concat(References.Where(r => r.Vertical).Select(r => r.Value)).Where(x => Usable(x, LogX))];
        (double x0, double x1) = Range(xs, LogX);
        (double y0, double y1) = Range(points.Select(p => p.Y).Concat(References.Where(r => !r.Vertical).Select(r => r.Value)).Where(y => Usable(y, LogY)), LogY);
        double plotW = PlotWidth;
        double Px(double x) => Left + (plotW * (Transform(x, LogX) - Transform(x0, LogX)) / (Transform(x1, LogX) - Transform(x0, LogX)));
        double Py(double y) => Top + PlotHeight - (PlotHeight * (Transform(y, LogY) - Transform(y0, LogY)) / (Transform(y1, LogY) - Transform(y0, LogY)));
        bool powersOfTwo = LogX && xs.Count > 1 && xs.All(x => x >= 1 && x == Math.Round(x) && IsPowerOfTwo(x));

        var svg = new StringBuilder();
        svg.Append(F($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"{FontSize}\">\n"));
        svg.Append(F($"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>\n"));
        svg.Append(F($"<text class=\"title\" x=\"{Left + (plotW / 2)}\" y=\"30\" text-anchor=\"middle\" font-size=\"{TitleFontSize}\" font-weight=\"bold\">{Escape(Title)}</text>\n"));

        // Grid, ticks and tick labels.
        svg.Append(F($"<g class=\"ticks\" stroke=\"#e3e3e3\" font-size=\"{TickFontSize}\">\n"));
        IReadOnlyList<double> xTicks = powersOfTwo ? PowerOfTwoTicks(x0, x1) : Ticks(x0, x1, LogX);
        foreach (double t in Thin(xTicks, x => Px(x), TickFontSize, powersOfTwo))
        {
            double px = Px(t);
            svg.Append(F($"<line x1=\"{px:F1}\" y1=\"{Top}\" x2=\"{px:F1}\" y2=\"{Top + PlotHeight}\"/>"));
            svg.Append(F($"<text x=\"{px:F1}\" y=\"{Top + PlotHeight + 20}\" text-anchor=\"middle\" stroke=\"none\" fill=\"#222\">{Label(t, powersOfTwo)}</text>\n"));
        }

        foreach (double t in Ticks(y0, y1, LogY))
        {
            double py = Py(t);
            svg.Append(F($"<line x1=\"{Left}\" y1=\"{py:F1}\" x2=\"{Left + plotW}\" y2=\"{py:F1}\"/>"));
            svg.Append(F($"<text x=\"{Left - 8}\" y=\"{py + 5:F1}\" text-anchor=\"end\" stroke=\"none\" fill=\"#222\">{Label(t, false)}</text>\n"));
        }

        svg.Append("</g>\n");
        svg.Append(F($"<rect class=\"axes\" x=\"{Left}\" y=\"{Top}\" width=\"{plotW}\" height=\"{PlotHeight}\" fill=\"none\" stroke=\"#333\"/>\n"));
        svg.Append(F($"<text class=\"axis-title\" x=\"{Left + (plotW / 2)}\" y=\"{Top + PlotHeight + 48}\" text-anchor=\"middle\">{Escape(XLabel)}</text>\n"));
        svg.Append(F($"<text class=\"axis-title\" transform=\"translate(22,{Top + (PlotHeight / 2)}) rotate(-90)\" text-anchor=\"middle\">{Escape(YLabel)}</text>\n"));

        // Reference lines under the series, labels stacked so two lines at one height do not print over each other.
        var labelled = new List<(double X, double Y)>();
        foreach (PlotReference reference in References)
        {
            if (!Usable(reference.Value, reference.Vertical ? LogX : LogY))
            {
                continue;
            }

            string color = Color(reference.Family);
            if (reference.Vertical)
            {
                double px = Px(reference.Value);
                svg.Append(F($"<line class=\"reference\" x1=\"{px:F1}\" y1=\"{Top}\" x2=\"{px:F1}\" y2=\"{Top + PlotHeight}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>"));
                bool nearRight = px > Left + (plotW * 0.6);
                double y = FreeY(labelled, px, Top + 20, 20);
                svg.Append(F($"<text class=\"reference-label\" x=\"{(nearRight ? px - 6 : px + 6):F1}\" y=\"{y:F1}\" text-anchor=\"{(nearRight ? "end" : "start")}\" fill=\"{color}\"{Halo}>{Escape(reference.Label)}</text>\n"));
            }
            else
            {
                double py = Py(reference.Value);
                svg.Append(F($"<line class=\"reference\" x1=\"{Left}\" y1=\"{py:F1}\" x2=\"{Left + plotW}\" y2=\"{py:F1}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>"));
                bool low = py > Top + (PlotHeight * 0.15);
                double y = FreeY(labelled, Left + plotW, low ? py - 6 : py + 18, low ? -20 : 20);
                svg.Append(F($"<text class=\"reference-label\" x=\"{Left + plotW - 6}\" y=\"{y:F1}\" text-anchor=\"end\" fill=\"{color}\"{Halo}>{Escape(reference.Label)}</text>\n"));
            }
        }

        var legend = Legend();
        for (int i = 0; i < Series.Count; i++)
        {
            PlotSeries series = Series[i];
            string color = Color(series.Family ?? series.Name);
            int style = StyleIndex(series.Style);
            string dash = Dashes[style].Length > 0 ? F($" stroke-dasharray=\"{Dashes[style]}\"") : string.Empty;
            if (series.Band is { Count: > 0 } band)
            {
                var usable = band.Where(b => Usable(b.X, LogX) && Usable(b.Low, LogY) && Usable(b.High, LogY)).ToList();
                if (usable.Count > 1)
                {
                    string outline = string.Join(" ", usable.Select(b => F($"{Px(b.X):F1},{Py(b.High):F1}"))
                        .Concat(Enumerable.Reverse(usable).Select(b => F($"{Px(b.X):F1},{Py(b.Low):F1}"))));
                    svg.Append(F($"<polygon class=\"band\" points=\"{outline}\" fill=\"{color}\" fill-opacity=\"0.16\" stroke=\"none\"/>\n"));
                }
            }

            // Unusable points break the line into runs.
            var run = new List<string>();
            void Flush()
            {
                if (run.Count > 1)
                {
                    svg.Append(F($"<polyline class=\"series\" points=\"{string.Join(" ", run)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\"{dash}/>\n"));
                }

                run.Clear();
            }

            foreach ((double x, double y) in series.Points)
            {
                if (!Usable(x, LogX) || !Usable(y, LogY))
                {
                    Flush();
                    continue;
                }

                run.Add(F($"{Px(x):F1},{Py(y):F1}"));
                svg.Append(Marker(Px(x), Py(y), style, color));
            }

            svg.Append('\n');
            Flush();

            double lx = Left + (i % legend.Columns * legend.ColumnWidth) + 4;
            double ly = Top + PlotHeight + AxisBand + 12 + (i / legend.Columns * LegendRow);
            svg.Append(F($"<g class=\"legend\"><line x1=\"{lx}\" y1=\"{ly}\" x2=\"{lx + 36}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2.5\"{dash}/>"));
            svg.Append(Marker(lx + 18, ly, style, color));
            svg.Append(F($"<text x=\"{lx + 44}\" y=\"{ly + 5}\">{Escape(series.Name)}</text></g>\n"));
        }

        svg.Append("</svg>\n");
        return svg.ToString();
    }

    /// <summary>A marker: circle, square, triangle, diamond, then a cross, by style.</summary>
    private static string Marker(double x, double y, int style, string color) => (style % 5) switch
    {
        0 => F($"<circle class=\"marker\" cx=\"{x:F1}\" cy=\"{y:F1}\" r=\"4\" fill=\"{color}\"/>"),
        1 => F($"<rect class=\"marker\" x=\"{x - 3.5:F1}\" y=\"{y - 3.5:F1}\" width=\"7\" height=\"7\" fill=\"{color}\"/>"),
        2 => F($"<path class=\"marker\" d=\"M{x:F1},{y - 5:F1}L{x + 4.5:F1},{y + 3.5:F1}L{x - 4.5:F1},{y + 3.5:F1}Z\" fill=\"{color}\"/>"),
        3 => F($"<path class=\"marker\" d=\"M{x:F1},{y - 5:F1}L{x + 5:F1},{y:F1}L{x:F1},{y + 5:F1}L{x - 5:F1},{y:F1}Z\" fill=\"{color}\"/>"),
        _ => F($"<path class=\"marker\" d=\"M{x - 4:F1},{y - 4:F1}L{x + 4:F1},{y + 4:F1}M{x - 4:F1},{y + 4:F1}L{x + 4:F1},{y - 4:F1}\" stroke=\"{color}\" stroke-width=\"2\"/>"),
    };

    /// <summary>A label height near <paramref name="y"/> not taken by an earlier label at about the same x (stepping by <paramref name="step"/>).</summary>
    private static double FreeY(List<(double X, double Y)> taken, double x, double y, double step)
    {
        while (taken.Any(t => Math.Abs(t.Y - y) < 17 && Math.Abs(t.X - x) < 300))
        {
            y += step;
        }

        taken.Add((x, y));
        return y;
    }

    /// <summary>
    /// Tick positions: on a log axis every decade (every other, or every third, when there are many), with 2 and 5
    /// between them when the range spans fewer than two decades; 1-2-5 steps on a linear axis.
    /// </summary>
    internal static IReadOnlyList<double> Ticks(double low, double high, bool log)
    {
        var ticks = new List<double>();
        if (!double.IsFinite(low) || !double.IsFinite(high) || !(high > low) || (log && !(low > 0)))
        {
            return ticks;
        }

        if (log)
        {
            int first = (int)Math.Ceiling(Math.Log10(low) - 1e-9), last = (int)Math.Floor(Math.Log10(high) + 1e-9);
            int step = Math.Max(1, (last - first + 1 + 7) / 8);
            for (int e = first; e <= last; e += step)
            {
                ticks.Add(Math.Pow(10, e));
            }

            // Under about two decades: 1, 2 and 5 in each; under about half a decade: every digit.
            double decades = Math.Log10(high / low);
            if (decades < 2.2)
            {
                ticks.Clear();
                double[] mantissas = decades < 0.7 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : [1, 2, 5];
                for (int e = first - 1; e <= last; e++)
                {
                    foreach (double m in mantissas)
                    {
                        double t = m * Math.Pow(10, e);
                        if (t >= low * (1 - 1e-9) && t <= high * (1 + 1e-9))
                        {
                            ticks.Add(t);
                        }
                    }
                }
            }

            // A range inside one digit step (say 4.4 to 4.6) holds none of those: tick it linearly.
            return ticks.Count >= 2 ? ticks : Ticks(low, high, log: false);
        }

        double raw = ((high / 2) - (low / 2)) / 3, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double nice = raw / magnitude < 1.5 ? 1 : raw / magnitude < 3.5 ? 2 : raw / magnitude < 7.5 ? 5 : 10;
        double delta = nice * magnitude;
        for (long i = (long)Math.Ceiling(low / delta); i * delta <= high + (delta * 1e-9) && ticks.Count < 50; i++)
        {
            double t = i * delta;
            ticks.Add(Math.Abs(t) < delta * 1e-9 ? 0 : t);
        }

        return ticks;
    }

    /// <summary>Every power of two in the range.</summary>
    private static List<double> PowerOfTwoTicks(double low, double high)
    {
        var ticks = new List<double>();
        for (int e = (int)Math.Ceiling(Math.Log2(low) - 1e-9); e <= (int)Math.Floor(Math.Log2(high) + 1e-9); e++)
        {
            ticks.Add(Math.Pow(2, e));
        }

        return ticks;
    }

    /// <summary>Keeps every k-th tick, k the smallest that leaves room between neighbouring labels.</summary>
    private static IEnumerable<double> Thin(IReadOnlyList<double> ticks, Func<double, double> position, double fontSize, bool powersOfTwo)
    {
        for (int k = 1; k <= Math.Max(1, ticks.Count); k++)
        {
            var kept = ticks.Where((_, i) => i % k == 0).ToList();
            bool fits = kept.Zip(kept.Skip(1), (a, b) => position(b) - position(a) - ((TextWidth(Label(a, powersOfTwo), fontSize) + TextWidth(Label(b, powersOfTwo), fontSize)) / 2)).All(gap => gap >= 10);
            if (fits)
            {
                return kept;
            }
        }

        return ticks.Take(1);
    }

    /// <summary>The axis range: the data's, widened by 4% of its span on each side (of its decades, on a log axis), and never a zero span.</summary>
    private static (double Low, double High) Range(IEnumerable<double> values, bool log)
    {
        var list = values.ToList();
        if (list.Count == 0)
        {
            return log ? (1, 10) : (0, 1);
        }

        // Within a tenth of double's range at either end, so padding and spans stay finite.
        double low = Math.Max(list.Min(), log ? 1e-300 : -1e307), high = Math.Min(list.Max(), 1e307);
        if (log)
        {
            // At least half a decade shown: a quantity that barely moves (a flat workspace) then looks flat.
            double a = Math.Log10(low), b = Math.Log10(high), span = b - a;
            if (span < 0.5)
            {
                double centre = (a + b) / 2;
                (a, b, span) = (centre - 0.25, centre + 0.25, 0.5);
            }

            return (Math.Pow(10, a - (span * 0.04)), Math.Pow(10, b + (span * 0.04)));
        }

        double width = (high / 2) - (low / 2);
        if (width < 1e-12 * Math.Max(1, Math.Abs(high)))
        {
            return (low - 0.5 - Math.Abs(low * 0.1), high + 0.5 + Math.Abs(high * 0.1));
        }

        return (low - (width * 0.08), high + (width * 0.08));
    }

    private static bool IsPowerOfTwo(double x) => System.Numerics.BitOperations.IsPow2((ulong)x);

    /// <summary>Drawable: finite, within a tenth of double's range (so positions stay finite), and positive on a log axis.</summary>
    private static bool Usable(double v, bool log) => double.IsFinite(v) && Math.Abs(v) <= 1e307 && (!log || v >= 1e-300);

    private static double Transform(double v, bool log) => log ? Math.Log10(v) : v;

    /// <summary>A tick label in the report's number format; powers of two from 2^20 up as 2^k.</summary>
    private static string Label(double t, bool powerOfTwo) =>
        powerOfTwo && t >= 1 << 20 ? F($"2^{(int)Math.Round(Math.Log2(t))}") : NumberText.Format(t, 4);

    /// <summary>An estimate of a text's width in a sans-serif font: 0.6 em a character.</summary>
    internal static double TextWidth(string text, double fontSize) => text.Length * fontSize * 0.6;

    private static string Escape(string text) => SecurityElement.Escape(text);

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
