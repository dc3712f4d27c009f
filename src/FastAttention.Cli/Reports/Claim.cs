using System.Text;

namespace FastAttention.Cli.Reports;

/// <summary>Whether a measurement bears a claim out.</summary>
internal enum Verdict
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
internal sealed record Claim(string Source, string Statement, string Measured, Verdict Verdict)
{
    /// <summary>Holds when every condition does, partly when some do, does not hold when none do.</summary>
    public static Verdict Of(params bool[] conditions) =>
        conditions.All(c => c) ? Verdict.Holds : conditions.Any(c => c) ? Verdict.Partly : Verdict.DoesNotHold;

    /// <summary>The verdict as the report prints it.</summary>
    public static string Text(Verdict verdict) => verdict switch
    {
        Verdict.Holds => "holds",
        Verdict.Partly => "partly",
        Verdict.DoesNotHold => "does not hold",
        _ => "not measured",
    };

    /// <summary>A markdown table of claims.</summary>
    public static string Table(IEnumerable<Claim> claims, bool withSource)
    {
        var md = new StringBuilder();
        md.AppendLine(withSource ? "| source | claim | measured here | verdict |" : "| claim | measured here | verdict |");
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
