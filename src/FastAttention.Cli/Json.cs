using System.Globalization;
using System.Text;
using System.Text.Json;

namespace FastAttention.Cli;

/// <summary>Prints one JSON object to stdout.</summary>
internal static class Json
{
    public static void Write(TextWriter stdout, Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            body(writer);
            writer.WriteEndObject();
        }

        stdout.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
    }

    public static void WriteShape(Utf8JsonWriter writer, string name, IEnumerable<int> shape)
    {
        writer.WriteStartArray(name);
        foreach (int length in shape)
        {
            writer.WriteNumberValue(length);
        }

        writer.WriteEndArray();
    }

    /// <summary>The polynomial method's certificate as the object <c>certificate</c>.</summary>
    public static void WriteCertificate(Utf8JsonWriter writer, PolynomialCertificate certificate)
    {
        writer.WriteStartObject("certificate");
        writer.WriteNumber("degree", certificate.Degree);
        writer.WriteNumber("rank", certificate.Rank);
        writer.WriteNumber("range", certificate.Range);
        writer.WriteNumber("polynomialRelativeError", certificate.PolynomialRelativeError);
        writer.WriteNumber("outputBound", certificate.OutputBound);
        writer.WriteNumber("roundingBound", certificate.RoundingBound);
        writer.WriteEndObject();
    }

    /// <summary>
    /// Keys and values stored in a low-precision type: <c>kvDtype</c>, <c>kvBitsPerValue</c> (q8's scales included) and the
    /// storage's error bound as the object <c>kvBound</c> (<see cref="KvErrorBound"/>; a figure that is not finite is null).
    /// </summary>
    public static void WriteKvStorage(Utf8JsonWriter writer, KvElementType type, double bitsPerValue, KvErrorBound? bound)
    {
        writer.WriteString("kvDtype", KvElementTypes.Name(type));
        writer.WriteNumber("kvBitsPerValue", bitsPerValue);
        if (bound is null)
        {
            writer.WriteNull("kvBound");
            return;
        }

        writer.WriteStartObject("kvBound");
        FiniteOrNull(writer, "scoreError", bound.ScoreError);
        FiniteOrNull(writer, "valueError", bound.ValueError);
        FiniteOrNull(writer, "maxAbsValue", bound.MaxAbsValue);
        FiniteOrNull(writer, "relativeToMaxValue", bound.RelativeToMaxValue);
        FiniteOrNull(writer, "absolute", bound.Absolute);
        writer.WriteEndObject();
    }

    /// <summary>The storage bound as one line of text: what every output element is within, and its two ingredients.</summary>
    public static string DescribeKvBound(KvElementType type, double bitsPerValue, KvErrorBound? bound) => bound is null
        ? string.Create(CultureInfo.InvariantCulture, $"keys and values stored as {KvElementTypes.Name(type)} ({NumberText.Format(bitsPerValue)} bits a value)")
        : string.Create(CultureInfo.InvariantCulture,
            $"keys and values stored as {KvElementTypes.Name(type)} ({NumberText.Format(bitsPerValue)} bits a value): every output within {NumberText.Format(bound.Absolute)} of attention on the values they were rounded from (score error {NumberText.Format(bound.ScoreError)}, value error {NumberText.Format(bound.ValueError)}, max |V| {NumberText.Format(bound.MaxAbsValue)}; the float32 kernel's own rounding comes on top)");

    private static void FiniteOrNull(Utf8JsonWriter writer, string name, double value)
    {
        if (double.IsFinite(value))
        {
            writer.WriteNumber(name, value);
        }
        else
        {
            writer.WriteNull(name);
        }
    }

    /// <summary>The planner's choice as the object <c>plan</c>.</summary>
    public static void WritePlan(Utf8JsonWriter writer, AttentionPlan plan)
    {
        writer.WriteStartObject("plan");
        writer.WriteString("method", Cli.MethodName(plan.Method));
        writer.WriteString("explanation", plan.Explanation);
        writer.WriteStartArray("candidates");
        foreach (PlanCandidate candidate in plan.Candidates)
        {
            writer.WriteStartObject();
            writer.WriteString("method", Cli.MethodName(candidate.Method));
            writer.WriteBoolean("feasible", candidate.Feasible);
            if (double.IsFinite(candidate.PredictedSeconds))
            {
                writer.WriteNumber("predictedSeconds", candidate.PredictedSeconds);
            }
            else
            {
                writer.WriteNull("predictedSeconds");
            }

            writer.WriteString("reason", candidate.Reason);
            writer.WriteEndObject();
        }

        writer.WriteEndArray();
        writer.WriteEndObject();
    }
}
