using System.Text;

namespace FastAttention.Lab.Reports;

/// <summary>Whether a measurement bears a claim out.</summary>
public enum Verdict
{
    /// <summary>The measurement agrees with the claim.</summary>
    Holds,

    /// <summary>It agrees in part (some settings, some sizes), as the measured text says.</summary>
    Partly,

    /// <summary>The measurement contradicts the claim.</summary>
    DoesNotHold,

    /// <summary>Nothing was measured (data or tools missing).</summary>
    NotMeasured,
}

/// <summary>
/// One claim and what this machine measured of it. The verdict is computed from the measurement by the
/// experiment that made it, never written by hand.
/// </summary>
/// <param name="Source">Where the claim comes from (a paper, or this library's own goal).</param>
/// <param name="Statement">The claim, in one sentence.</param>
/// <param name="Measured">What was measured, with the numbers.</param>
/// <param name="Verdict">Whether the measurement bears the claim out.</param>
public sealed record Claim(string Source, string Statement, string Measured, Verdict Verdict)
{
    /// <summary>
    /// Holds when every condition does, partly when some do, does not hold when none do; with no condition at all
    /// nothing was measured, and the verdict says so.
    /// </summary>
    /// <param name="conditions">One outcome per measured setting.</param>
    /// <returns>The verdict.</returns>
    public static Verdict Of(params bool[] conditions)
    {
        ArgumentNullException.ThrowIfNull(conditions);
        return conditions.Length == 0 ? Verdict.NotMeasured
            : conditions.All(c => c) ? Verdict.Holds
            : conditions.Any(c => c) ? Verdict.Partly
            : Verdict.DoesNotHold;
    }

    /// <summary>Every verdict's text, as the report prints it.</summary>
    public static IReadOnlyList<string> Texts { get; } = [.. Enum.GetValues<Verdict>().Select(Text)];

    /// <summary>The verdict as the report prints it.</summary>
    /// <param name="verdict">The verdict.</param>
    /// <returns>holds, partly, does not hold or not measured.</returns>
    public static string Text(Verdict verdict) => verdict switch
    {
        Verdict.Holds => "holds",
        Verdict.Partly => "partly",
        Verdict.DoesNotHold => "does not hold",
        _ => "not measured",
    };

    /// <summary>A markdown table of claims: statement, what was measured, verdict (and the source).</summary>
    /// <param name="claims">The claims.</param>
    /// <param name="withSource">Whether to add the source column.</param>
    /// <returns>The table.</returns>
    public static string Table(IEnumerable<Claim> claims, bool withSource)
    {
        ArgumentNullException.ThrowIfNull(claims);
        var md = new StringBuilder();
        md.AppendLine(withSource ? "| source | claim | measured | verdict |" : "| claim | measured | verdict |");
        md.AppendLine(withSource ? "|---|---|---|---|" : "|---|---|---|");
        foreach (Claim c in claims)
        {
            string cells = $"{Cell(c.Statement)} | {Cell(c.Measured)} | **{Text(c.Verdict)}** |";
            md.AppendLine(withSource ? $"| {Cell(c.Source)} | {cells}" : $"| {cells}");
        }

        return md.ToString();
    }

    private static string Cell(string text) => text.Replace("|", "\\|", StringComparison.Ordinal).ReplaceLineEndings(" ");
}
