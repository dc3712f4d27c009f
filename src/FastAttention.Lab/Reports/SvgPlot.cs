using System.Globalization;
using System.Security;
using System.Text;

namespace FastAttention.Lab.Reports;

/// <summary>One line of a plot: points (x, y), and optionally a band [low, high] around it.</summary>
/// <param name="Name">Legend text.</param>
/// <param name="Points">The points, drawn in order; non-finite (or, on a log axis, non-positive) points break the line.</param>
/// <param name="Band">Optional (x, low, high) for an error band, drawn shaded under the line.</param>
internal sealed record PlotSeries(string Name, IReadOnlyList<(double X, double Y)> Points, IReadOnlyList<(double X, double Low, double High)>? Band = null);

/// <summary>A horizontal or vertical reference line with a label.</summary>
/// <param name="Value">y for a horizontal line, x for a vertical one.</param>
/// <param name="Label">Text beside the line.</param>
/// <param name="Vertical">Whether the line is vertical.</param>
internal sealed record PlotReference(double Value, string Label, bool Vertical = false);

/// <summary>
/// A line plot written as a standalone SVG document: axes with ticks and tick labels (decades on log axes,
/// 1-2-5 steps on linear ones), axis titles, a legend, optional error bands and reference lines. No
/// plotting package is available from this project's registry, so this small component draws its own.
/// </summary>
internal sealed class SvgPlot
{
    private const double PlotWidth = 398, Height = 400, Left = 72, Top = 40, Bottom = 56;

    /// <summary>Room right of the axes for the legend: wide enough for the longest series name (about 7 px a character at 12 px).</summary>
    private double Right => Math.Max(170, 50 + (7 * Series.Select(x => x.Name.Length).DefaultIfEmpty(0).Max()));

    private double Width => Left + PlotWidth + Right;

    private static readonly string[] Colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];

    public required string Title { get; init; }

    public required string XLabel { get; init; }

    public required string YLabel { get; init; }

    public bool LogX { get; init; }

    public bool LogY { get; init; }

    public List<PlotSeries> Series { get; } = [];

    public List<PlotReference> References { get; } = [];

    /// <summary>The SVG document.</summary>
    public string Render()
    {
        List<(double X, double Y)> points = [.. Series.SelectMany(s => s.Points
                .Concat(s.Band?.SelectMany(b => new (double X, double Y)[] { (b.X, b.Low), (b.X, b.High) }) ?? []))
            .Where(p => Usable(p.X, LogX) && Usable(p.Y, LogY))];
        (double x0, double x1) = Range(points.Select(p => p.X).Concat(References.Where(r => r.Vertical).Select(r => r.Value)).Where(x => Usable(x, LogX)), LogX);
        (double y0, double y1) = Range(points.Select(p => p.Y).Concat(References.Where(r => !r.Vertical).Select(r => r.Value)).Where(y => Usable(y, LogY)), LogY);
        double plotW = PlotWidth, plotH = Height - Top - Bottom;
        double Px(double x) => Left + (plotW * (Transform(x, LogX) - Transform(x0, LogX)) / (Transform(x1, LogX) - Transform(x0, LogX)));
        double Py(double y) => Top + plotH - (plotH * (Transform(y, LogY) - Transform(y0, LogY)) / (Transform(y1, LogY) - Transform(y0, LogY)));

        var svg = new StringBuilder();
        svg.Append(F($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"12\">\n"));
        svg.Append(F($"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>\n"));
        svg.Append(F($"<text x=\"{Left + (PlotWidth / 2)}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{Escape(Title)}</text>\n"));

        // Grid, ticks and tick labels.
        svg.Append("<g class=\"ticks\" stroke=\"#ddd\">\n");
        foreach (double t in Ticks(x0, x1, LogX))
        {
            double px = Px(t);
            svg.Append(F($"<line x1=\"{px:F1}\" y1=\"{Top}\" x2=\"{px:F1}\" y2=\"{Top + plotH}\"/>"));
            svg.Append(F($"<text x=\"{px:F1}\" y=\"{Top + plotH + 16}\" text-anchor=\"middle\" stroke=\"none\" fill=\"#333\">{Label(t)}</text>\n"));
        }

        foreach (double t in Ticks(y0, y1, LogY))
        {
            double py = Py(t);
            svg.Append(F($"<line x1=\"{Left}\" y1=\"{py:F1}\" x2=\"{Left + plotW}\" y2=\"{py:F1}\"/>"));
            svg.Append(F($"<text x=\"{Left - 6}\" y=\"{py + 4:F1}\" text-anchor=\"end\" stroke=\"none\" fill=\"#333\">{Label(t)}</text>\n"));
        }

        svg.Append("</g>\n");
        svg.Append(F($"<rect class=\"axes\" x=\"{Left}\" y=\"{Top}\" width=\"{plotW}\" height=\"{plotH}\" fill=\"none\" stroke=\"#333\"/>\n"));
        svg.Append(F($"<text x=\"{Left + (plotW / 2)}\" y=\"{Height - 14}\" text-anchor=\"middle\">{Escape(XLabel)}</text>\n"));
        svg.Append(F($"<text transform=\"translate(18,{Top + (plotH / 2)}) rotate(-90)\" text-anchor=\"middle\">{Escape(YLabel)}</text>\n"));

        foreach (PlotReference reference in References)
        {
            if (!Usable(reference.Value, reference.Vertical ? LogX : LogY))
            {
                continue;
            }

            if (reference.Vertical)
            {
                double px = Px(reference.Value);
                svg.Append(F($"<line class=\"reference\" x1=\"{px:F1}\" y1=\"{Top}\" x2=\"{px:F1}\" y2=\"{Top + plotH}\" stroke=\"#555\" stroke-dasharray=\"5,4\"/>"));
                bool nearRight = px > Left + (plotW * 0.6); // label on the inner side, clear of the legend
                svg.Append(F($"<text x=\"{(nearRight ? px - 4 : px + 4):F1}\" y=\"{Top + 14}\" text-anchor=\"{(nearRight ? "end" : "start")}\" fill=\"#555\">{Escape(reference.Label)}</text>\n"));
            }
            else
            {
                double py = Py(reference.Value);
                svg.Append(F($"<line class=\"reference\" x1=\"{Left}\" y1=\"{py:F1}\" x2=\"{Left + plotW}\" y2=\"{py:F1}\" stroke=\"#555\" stroke-dasharray=\"5,4\"/>"));
                svg.Append(F($"<text x=\"{Left + 4}\" y=\"{py - 4:F1}\" fill=\"#555\">{Escape(reference.Label)}</text>\n"));
            }
        }

        for (int i = 0; i < Series.Count; i++)
        {
            PlotSeries series = Series[i];
            string color = Colors[i % Colors.Length];
            if (series.Band is { Count: > 0 } band)
            {
                var usable = band.Where(b => Usable(b.X, LogX) && Usable(b.Low, LogY) && Usable(b.High, LogY)).ToList();
                if (usable.Count > 1)
                {
                    string outline = string.Join(" ", usable.Select(b => F($"{Px(b.X):F1},{Py(b.High):F1}"))
                        .Concat(Enumerable.Reverse(usable).Select(b => F($"{Px(b.X):F1},{Py(b.Low):F1}"))));
                    svg.Append(F($"<polygon class=\"band\" points=\"{outline}\" fill=\"{color}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n"));
                }
            }

            // Unusable points break the line into runs.
            var run = new List<string>();
            void Flush()
            {
                if (run.Count > 1)
                {
                    svg.Append(F($"<polyline class=\"series\" points=\"{string.Join(" ", run)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n"));
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
                svg.Append(F($"<circle class=\"marker\" cx=\"{Px(x):F1}\" cy=\"{Py(y):F1}\" r=\"3\" fill=\"{color}\"/>"));
            }

            svg.Append('\n');
            Flush();

            double ly = Top + 8 + (i * 20);
            svg.Append(F($"<g class=\"legend\"><line x1=\"{Width - Right + 12}\" y1=\"{ly}\" x2=\"{Width - Right + 36}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>"));
            svg.Append(F($"<text x=\"{Width - Right + 42}\" y=\"{ly + 4}\">{Escape(series.Name)}</text></g>\n"));
        }

        svg.Append("</svg>\n");
        return svg.ToString();
    }

    /// <summary>Tick positions: every decade (or every other, when there are many) on a log axis; 1-2-5 steps on a linear one.</summary>
    internal static IReadOnlyList<double> Ticks(double low, double high, bool log)
    {
        var ticks = new List<double>();
        if (log)
        {
            int first = (int)Math.Ceiling(Math.Log10(low) - 1e-9), last = (int)Math.Floor(Math.Log10(high) + 1e-9);
            int step = Math.Max(1, (last - first + 1 + 7) / 8);
            for (int e = first; e <= last; e += step)
            {
                ticks.Add(Math.Pow(10, e));
            }

            return ticks;
        }

        double raw = (high - low) / 6, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double nice = raw / magnitude < 1.5 ? 1 : raw / magnitude < 3.5 ? 2 : raw / magnitude < 7.5 ? 5 : 10;
        double delta = nice * magnitude;
        for (double t = Math.Ceiling(low / delta) * delta; t <= high + (delta * 1e-9); t += delta)
        {
            ticks.Add(Math.Abs(t) < delta * 1e-9 ? 0 : t);
        }

        return ticks;
    }

    private static (double Low, double High) Range(IEnumerable<double> values, bool log)
    {
        var list = values.ToList();
        if (list.Count == 0)
        {
            return log ? (1, 10) : (0, 1);
        }

        double low = list.Min(), high = list.Max();
        if (log)
        {
            // Whole decades, so the first and last ticks sit on the frame.
            low = Math.Pow(10, Math.Floor(Math.Log10(low)));
            high = Math.Pow(10, Math.Ceiling(Math.Log10(high)));
            return high > low ? (low, high) : (low, low * 10);
        }

        if (high - low < 1e-12 * Math.Max(1, Math.Abs(high)))
        {
            return (low - 0.5 - Math.Abs(low * 0.1), high + 0.5 + Math.Abs(high * 0.1));
        }

        double pad = (high - low) * 0.05;
        return (low - pad, high + pad);
    }

    private static bool Usable(double v, bool log) => double.IsFinite(v) && (!log || v > 0);

    private static double Transform(double v, bool log) => log ? Math.Log10(v) : v;

    private static string Label(double t) => NumberText.Format(t, 4);

    private static string Escape(string text) => SecurityElement.Escape(text);

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
