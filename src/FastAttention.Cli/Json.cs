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
