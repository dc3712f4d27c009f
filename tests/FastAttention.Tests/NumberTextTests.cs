using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FastAttention.Tests;

/// <summary><see cref="NumberText"/>: the one number format of the CLI's text, JSON and the report.</summary>
public partial class NumberTextTests
{
    /// <summary>Fixed notation, or d[.ddd]E±XX with at least two exponent digits.</summary>
    [GeneratedRegex(@"^-?(\d+(\.\d+)?|\d(\.\d+)?E[+-]\d{2,3})$")]
    internal static partial Regex Grammar();

    /// <summary>An exponent written in any other way: three digits with a leading zero (.NET's "E2"), one digit, or a lowercase e.</summary>
    [GeneratedRegex(@"\d[Ee][+-]?0\d\d\b|\dE[+-]?\d\b|\d\.?\d*e[+-]?\d")]
    internal static partial Regex OtherExponent();

    [Theory]
    [InlineData(1.61e-5, 3, "1.61E-05")]
    [InlineData(1.16e-7, 3, "1.16E-07")]
    [InlineData(-2.5e-10, 3, "-2.5E-10")]
    [InlineData(0.000123456, 3, "0.000123")]
    [InlineData(0.00009996, 3, "0.0001")]
    [InlineData(0.00009996, 4, "9.996E-05")]
    [InlineData(1.5, 3, "1.5")]
    [InlineData(2.0, 3, "2")]
    [InlineData(0.1, 1, "0.1")]
    [InlineData(12345.6, 3, "12346")]
    [InlineData(123456.7, 3, "123457")]
    [InlineData(999999.7, 3, "1E+06")]
    [InlineData(1234567.0, 3, "1.23E+06")]
    [InlineData(4.294967296e9, 3, "4.29E+09")]
    [InlineData(1e100, 3, "1E+100")]
    [InlineData(double.Epsilon, 3, "4.94E-324")]
    [InlineData(0.0, 3, "0")]
    [InlineData(double.NaN, 3, "NaN")]
    [InlineData(double.PositiveInfinity, 3, "Infinity")]
    [InlineData(double.NegativeInfinity, 3, "-Infinity")]
    public void Writes_the_documented_form(double value, int digits, string expected) =>
        Assert.Equal(expected, NumberText.Format(value, digits));

    [Fact]
    public void Every_magnitude_reads_back_within_its_rounding_in_the_one_grammar()
    {
        var random = new Random(2026);
        for (int i = 0; i < 20_000; i++)
        {
            double value = (random.Next(2) == 0 ? -1 : 1) * Math.Pow(10, (random.NextDouble() * 60) - 30);
            foreach (int digits in new[] { 1, 3, 6, 15 })
            {
                string text = NumberText.Format(value, digits);
                Assert.Matches(Grammar(), text);
                double back = double.Parse(text, CultureInfo.InvariantCulture);
                // Rounded to `digits` significant digits: within half a unit in the last kept place.
                Assert.True(Math.Abs(back - value) <= 0.5000001 * Math.Pow(10, 1 - digits) * Math.Abs(value), $"{value:R} at {digits} digits read {text}");
            }
        }
    }

    [Fact]
    public void Json_numbers_take_the_same_notation()
    {
        foreach (double value in new[] { 1.61e-5, 1.16e-7, 3.5e-300, 0.000123, 42.0, 1e20 })
        {
            string json = JsonSerializer.Serialize(value);
            Assert.Matches(Grammar(), json);
            Assert.DoesNotMatch(OtherExponent(), json);
            Assert.Equal(json.Contains('E', StringComparison.Ordinal) || Math.Abs(value) >= 1e6, NumberText.Format(value).Contains('E', StringComparison.Ordinal));
        }
    }

    [Fact]
    public void Refuses_a_digit_count_outside_1_to_15()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => NumberText.Format(1.0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => NumberText.Format(1.0, 16));
        Assert.Equal("-", NumberText.Format(null, "-"));
        Assert.Equal("3.14", NumberText.Format((double?)Math.PI, "-"));
    }
}
