using System.Xml.Linq;
using FastAttention.Lab.Reports;

namespace FastAttention.Tests;

/// <summary>The report's SVG plot component: well-formed, every series drawn, ticks and legend present.</summary>
public class SvgPlotTests
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    private static XDocument Render(SvgPlot plot) => XDocument.Parse(plot.Render());

    [Fact]
    public void Log_log_plot_has_axes_decade_ticks_a_legend_and_one_line_per_series()
    {
        var plot = new SvgPlot { Title = "error <vs> m & more", XLabel = "m", YLabel = "error", LogX = true, LogY = true };
        plot.Series.Add(new PlotSeries("measured", [(4, 0.3), (16, 0.1), (64, 0.04), (256, 0.012)], [(4, 0.2, 0.4), (16, 0.08, 0.12), (64, 0.03, 0.05), (256, 0.01, 0.014)]));
        plot.Series.Add(new PlotSeries("1/sqrt(m)", [(4, 0.5), (256, 0.0625)]));
        plot.References.Add(new PlotReference(0.05, "target"));
        XDocument doc = Render(plot);

        Assert.Equal(Svg + "svg", doc.Root!.Name);
        Assert.Equal(2, doc.Descendants(Svg + "polyline").Count(e => (string?)e.Attribute("class") == "series"));
        Assert.Single(doc.Descendants(Svg + "polygon"), e => (string?)e.Attribute("class") == "band");
        Assert.Equal(6, doc.Descendants(Svg + "circle").Count(c => (string?)c.Parent!.Attribute("class") != "legend"));
        string[] texts = [.. doc.Descendants(Svg + "text").Select(t => t.Value)];
        Assert.Contains("error <vs> m & more", texts); // escaped in the file, intact once parsed
        Assert.Contains("measured", texts);
        Assert.Contains("1/sqrt(m)", texts);
        Assert.Contains("target", texts);
        // x: all powers of two, so ticked at powers of two; y spans under two decades, so 1-2-5 ticks; nothing past the data.
        foreach (string tick in new[] { "4", "16", "64", "256", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5" })
        {
            Assert.Contains(tick, texts);
        }

        Assert.DoesNotContain("1000", texts);
        Assert.DoesNotContain("1", texts);
    }

    [Fact]
    public void Axes_end_near_the_data_instead_of_at_the_next_decade()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "n", YLabel = "seconds", LogX = true, LogY = true };
        plot.Series.Add(new PlotSeries("s", [(256, 0.002), (1024, 0.03), (16384, 7.5)]));
        string[] texts = [.. Render(plot).Descendants(Svg + "text").Select(t => t.Value)];
        Assert.Contains("16384", texts);
        Assert.DoesNotContain("32768", texts);
        Assert.DoesNotContain("1E+05", texts);
        Assert.DoesNotContain("100", texts); // y: 0.002 .. 7.5 gets ticks 0.01 .. 1, not 100
    }

    [Fact]
    public void A_quantity_that_barely_moves_looks_flat_and_still_gets_ticks()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "n", YLabel = "MiB", LogX = true, LogY = true };
        plot.Series.Add(new PlotSeries("workspace", [(1e4, 0.03305), (1e5, 0.03312), (1e6, 0.03308)]));
        XDocument doc = Render(plot);
        double[] ys = [.. doc.Descendants(Svg + "circle").Where(c => (string?)c.Parent!.Attribute("class") != "legend")
            .Select(c => double.Parse((string)c.Attribute("cy")!, System.Globalization.CultureInfo.InvariantCulture))];
        Assert.True(ys.Max() - ys.Min() < 5, $"a 0.2% change drawn {ys.Max() - ys.Min()} px apart");
        Assert.True(SvgPlot.Ticks(4.392, 4.608, log: true).Count >= 2);
        Assert.True(SvgPlot.Ticks(0.0298, 0.0367, log: true).Count >= 2);
    }

    [Theory]
    [InlineData(1e308, 1e308)]
    [InlineData(1e-200, 1e200)]
    [InlineData(-1e308, 1e308)]
    [InlineData(1.7e308, 1.7e308)]
    public void Extreme_values_neither_hang_nor_write_nan(double a, double b)
    {
        foreach (bool log in new[] { false, true })
        {
            var plot = new SvgPlot { Title = "t", XLabel = "x", YLabel = "y", LogY = log };
            plot.Series.Add(new PlotSeries("s", [(0, a), (1, b)]));
            string svg = plot.Render();
            Assert.DoesNotContain("NaN", svg);
            Assert.DoesNotContain("Infinity", svg);
        }

        Assert.Empty(SvgPlot.Ticks(1, double.PositiveInfinity, log: true));
        Assert.Empty(SvgPlot.Ticks(0, 1, log: true));
    }

    [Fact]
    public void An_unstyled_series_stays_solid_beside_styled_ones()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "x", YLabel = "y" };
        plot.Series.Add(new PlotSeries("styled", [(0, 1), (1, 2)]) { Style = "a" });
        plot.Series.Add(new PlotSeries("plain", [(0, 2), (1, 3)]));
        XElement[] lines = [.. Render(plot).Descendants(Svg + "polyline")];
        Assert.NotNull(lines[0].Attribute("stroke-dasharray"));
        Assert.Null(lines[1].Attribute("stroke-dasharray"));
    }

    [Fact]
    public void A_family_shares_a_colour_a_style_shares_a_dash_and_a_bound_takes_its_familys_colour()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "x", YLabel = "y" };
        plot.Series.Add(new PlotSeries("d = 4, eps = 0.01", [(0, 1), (1, 2)]) { Family = "d4", Style = "0.01" });
        plot.Series.Add(new PlotSeries("d = 4, eps = 0.001", [(0, 2), (1, 3)]) { Family = "d4", Style = "0.001" });
        plot.Series.Add(new PlotSeries("d = 8, eps = 0.01", [(0, 3), (1, 4)]) { Family = "d8", Style = "0.01" });
        plot.References.Add(new PlotReference(2.5, "bound for d = 8") { Family = "d8" });
        plot.References.Add(new PlotReference(0.5, "break-even"));
        XElement[] lines = [.. Render(plot).Descendants(Svg + "polyline").Where(e => (string?)e.Attribute("class") == "series")];
        string?[] colours = [.. lines.Select(l => (string?)l.Attribute("stroke"))];
        string?[] dashes = [.. lines.Select(l => (string?)l.Attribute("stroke-dasharray"))];
        Assert.Equal(colours[0], colours[1]);
        Assert.NotEqual(colours[0], colours[2]);
        Assert.NotEqual(dashes[0], dashes[1]);
        Assert.Equal(dashes[0], dashes[2]);
        XElement[] references = [.. Render(plot).Descendants(Svg + "line").Where(e => (string?)e.Attribute("class") == "reference")];
        Assert.Equal(colours[2], (string?)references[0].Attribute("stroke"));
        Assert.DoesNotContain((string?)references[1].Attribute("stroke"), colours);
    }

    [Fact]
    public void Non_finite_and_non_positive_points_break_the_line_instead_of_breaking_the_plot()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "x", YLabel = "y", LogY = true };
        plot.Series.Add(new PlotSeries("gappy", [(0, 1), (1, 2), (2, double.NaN), (3, 0), (4, 8), (5, 16)]));
        plot.Series.Add(new PlotSeries("empty", [(0, double.PositiveInfinity)]));
        XDocument doc = Render(plot);
        Assert.Equal(2, doc.Descendants(Svg + "polyline").Count()); // (0..1) and (4..5)
        Assert.Equal(4, doc.Descendants(Svg + "circle").Count(c => (string?)c.Parent!.Attribute("class") != "legend"));
        Assert.DoesNotContain("NaN", plot.Render());
        Assert.DoesNotContain("Infinity", plot.Render());
    }

    [Fact]
    public void Linear_ticks_are_round_numbers_covering_the_data_and_a_constant_series_still_renders()
    {
        IReadOnlyList<double> ticks = SvgPlot.Ticks(0.07, 1.43, log: false);
        Assert.All(ticks, t => Assert.Equal(0, Math.Round(t / 0.2, 9) % 1, 9));
        Assert.True(ticks.Count is >= 4 and <= 10);

        var flat = new SvgPlot { Title = "flat", XLabel = "x", YLabel = "y" };
        flat.Series.Add(new PlotSeries("c", [(1, 5), (2, 5), (3, 5)]));
        XDocument doc = Render(flat);
        Assert.Single(doc.Descendants(Svg + "polyline"));
        Assert.DoesNotContain("NaN", flat.Render());
    }

    [Fact]
    public void Long_series_names_get_legend_columns_wide_enough_to_fit()
    {
        var plot = new SvgPlot { Title = "t", XLabel = "x", YLabel = "y" };
        plot.Series.Add(new PlotSeries("a very long legend entry for one series, 52 characters", [(0, 1), (1, 2)]));
        XDocument doc = Render(plot);
        double width = double.Parse((string)doc.Root!.Attribute("width")!, System.Globalization.CultureInfo.InvariantCulture);
        double x = doc.Descendants(Svg + "text").Where(t => t.Value.StartsWith("a very long", StringComparison.Ordinal))
            .Select(t => double.Parse((string)t.Attribute("x")!, System.Globalization.CultureInfo.InvariantCulture)).Single();
        Assert.True(x + SvgPlot.TextWidth(new string('x', 52), 15) <= width, $"legend text ends near {x + SvgPlot.TextWidth(new string('x', 52), 15)} beyond width {width}");
    }
}
