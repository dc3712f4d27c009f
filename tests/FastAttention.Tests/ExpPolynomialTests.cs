using FastAttention.Polynomial;

namespace FastAttention.Tests;

/// <summary>Issue 4, deliverable 1: polynomial approximations of e^x with measured relative error.</summary>
public class ExpPolynomialTests
{
    /// <summary>The minimal degrees tabulated in docs/algorithms.md §2.2 (found numerically, independently of this code).</summary>
    [Theory]
    [InlineData(0.25, 1e-3, 3, 2)]
    [InlineData(0.25, 1e-6, 5, 4)]
    [InlineData(1.0, 1e-3, 6, 5)]
    [InlineData(1.0, 1e-6, 9, 7)]
    [InlineData(2.0, 1e-3, 10, 7)]
    [InlineData(2.0, 1e-6, 14, 10)]
    [InlineData(4.0, 1e-3, 17, 11)]
    [InlineData(4.0, 1e-6, 21, 15)]
    [InlineData(8.0, 1e-3, 31, 20)]
    [InlineData(8.0, 1e-6, 36, 24)]
    public void Minimal_degrees_match_the_specification_table(double range, double eps, int taylor, int chebyshev)
    {
        ExpPolynomial t = ExpPolynomial.Fit(range, eps, ExpFitMethod.Taylor);
        ExpPolynomial c = ExpPolynomial.Fit(range, eps, ExpFitMethod.Chebyshev);
        Assert.Equal(taylor, t.Degree);
        Assert.Equal(chebyshev, c.Degree);
        Assert.True(t.RelativeError <= eps);
        Assert.True(c.RelativeError <= eps);

        // Minimal: one degree less misses the target.
        Assert.True(ExpPolynomial.OfDegree(range, c.Degree - 1).RelativeError > eps);
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(3.0)]
    [InlineData(12.0)]
    public void Measured_error_is_the_true_maximum_and_shrinks_with_degree(double range)
    {
        double previous = double.PositiveInfinity;
        for (int g = 1; g <= 40; g++)
        {
            ExpPolynomial p = ExpPolynomial.OfDegree(range, g);

            // An independent check on a different, finer grid: the certificate must hold there too
            // (up to the grid's resolution, 2% slack).
            double worst = 0;
            for (int i = 0; i <= 100_000; i++)
            {
                double x = range * ((2.0 * i / 100_000) - 1);
                worst = Math.Max(worst, Math.Abs(p.Evaluate(x) - Math.Exp(x)) / Math.Exp(x));
            }

            Assert.True(worst <= (p.RelativeError * 1.02) + 1e-15, $"g={g}: finer grid finds {worst:E3} > certified {p.RelativeError:E3}");
            // Monotone wherever the error is meaningful: below 1 and well above the double-precision floor.
            if (p.RelativeError < 1 && p.RelativeError > 1000 * ExpPolynomial.PrecisionFloor(range) && previous < 1)
            {
                Assert.True(p.RelativeError <= previous * 1.0001, $"g={g}: error {p.RelativeError:E3} grew from {previous:E3}");
            }

            previous = p.RelativeError;
        }
    }

    [Fact]
    public void Monomial_conversion_is_stable_at_high_degree_and_wide_range()
    {
        // R = 10 at 1e-5: the left end e^-10 = 4.5e-5 is 4.9e8 times smaller than the right end and must
        // still be relatively exact; naive double conversion of the Chebyshev series loses it.
        ExpPolynomial p = ExpPolynomial.Fit(10, 1e-5);
        Assert.True(p.RelativeError <= 1e-5);
        Assert.InRange(p.Degree, 20, 40);
        Assert.Equal(Math.Exp(-10), p.Evaluate(-10), Math.Exp(-10) * 1e-5);
    }

    [Fact]
    public void Chebyshev_beats_taylor_once_the_range_is_wide()
    {
        foreach (double range in new[] { 2.0, 4.0, 8.0 })
        {
            Assert.True(ExpPolynomial.Fit(range, 1e-6).Degree < ExpPolynomial.Fit(range, 1e-6, ExpFitMethod.Taylor).Degree);
        }
    }

    [Theory]
    [InlineData(0.0, 1e-3)]
    [InlineData(-1.0, 1e-3)]
    [InlineData(double.NaN, 1e-3)]
    [InlineData(1.0, 0.0)]
    [InlineData(1.0, 1.0)]
    [InlineData(200.0, 1e-6)]
    [InlineData(20.0, 1e-6)]
    public void Invalid_or_hopeless_requests_are_clear_errors(double range, double eps)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => ExpPolynomial.Fit(range, eps));
        Assert.False(string.IsNullOrWhiteSpace(ex.Message));
    }
}
