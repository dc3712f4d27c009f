using System.Globalization;

namespace FastAttention;

/// <summary>
/// The one way FastAttention writes a measured or derived number for people: the CLI's text, the report and the
/// library's messages all use it, so an error reads <c>1.61E-05</c> everywhere (never <c>1.61E-005</c> beside
/// <c>1.6E-5</c>). A value is rounded to a number of significant digits (3 unless asked) and written in fixed
/// notation when its rounded decimal exponent is from -4 to 5 (<c>0.000123</c>, <c>1.5</c>, <c>12300</c>), with the
/// integer digits kept whole from there up to 999999 (<c>123457</c>), else as <c>d.ddE±XX</c> (<c>1.23E-05</c>,
/// <c>4.29E+09</c>): an uppercase E, a sign and at least two exponent digits, the form JSON output's numbers take
/// (System.Text.Json writes doubles round-trip in that same notation, switching to it below 1E-04 as here).
/// Trailing zeros after the point are dropped; NaN and infinities read <c>NaN</c>, <c>Infinity</c>, <c>-Infinity</c>.
/// </summary>
public static class NumberText
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>Writes <paramref name="value"/> with <paramref name="significantDigits"/> significant digits (1 to 15).</summary>
    /// <param name="value">Any double.</param>
    /// <param name="significantDigits">Significant digits kept, 1 to 15; 3 by default.</param>
    /// <returns>The text, culture-invariant.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="significantDigits"/> is outside 1 to 15.</exception>
    public static string Format(double value, int significantDigits = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(significantDigits, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(significantDigits, 15);
        if (!double.IsFinite(value))
        {
            return double.IsNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
        }

        if (value == 0)
        {
            return "0";
        }

        // "E" rounds to the digits asked and gives the exponent after rounding (9.995 -> 1.00E+001 at 3 digits).
        string scientific = value.ToString("E" + (significantDigits - 1).ToString(Invariant), Invariant);
        int at = scientific.IndexOf('E', StringComparison.Ordinal);
        string mantissa = TrimZeros(scientific[..at]);
        int exponent = int.Parse(scientific.AsSpan(at + 1), NumberStyles.AllowLeadingSign, Invariant);
        if (exponent is >= -4 and <= 5)
        {
            int decimals = Math.Max(0, significantDigits - 1 - exponent);
            return TrimZeros(value.ToString("F" + decimals.ToString(Invariant), Invariant));
        }

        return string.Concat(mantissa, "E", exponent < 0 ? "-" : "+", Math.Abs(exponent).ToString("00", Invariant));
    }

    /// <summary>Writes <paramref name="value"/> as <see cref="Format(double, int)"/> does, or <paramref name="missing"/> when it is null.</summary>
    /// <param name="value">The value, or null.</param>
    /// <param name="missing">The text for null.</param>
    /// <param name="significantDigits">Significant digits kept, 1 to 15; 3 by default.</param>
    /// <returns>The text.</returns>
    public static string Format(double? value, string missing, int significantDigits = 3) =>
        value is double v ? Format(v, significantDigits) : missing;

    private static string TrimZeros(string text) =>
        text.Contains('.', StringComparison.Ordinal) ? text.TrimEnd('0').TrimEnd('.') : text;
}
