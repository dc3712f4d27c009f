using System.Globalization;
using System.Runtime.InteropServices;

namespace FastAttention.Lab;

/// <summary>Where and when a figure was measured: every benchmark table and report header states it.</summary>
/// <param name="CpuModel">The CPU model (Linux: /proc/cpuinfo's "model name"; elsewhere the architecture).</param>
/// <param name="Cores">Logical processors the runtime sees.</param>
/// <param name="UtcTime">When the measurement was taken.</param>
public sealed record MachineStamp(string CpuModel, int Cores, DateTime UtcTime)
{
    /// <summary>This machine, now.</summary>
    /// <returns>The stamp.</returns>
    public static MachineStamp Now() => new(Machine.CpuModel, Environment.ProcessorCount, DateTime.UtcNow);

    /// <summary>"CPU, N cores, yyyy-MM-dd HH:mm UTC".</summary>
    /// <returns>The one-line description.</returns>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{CpuModel}, {Cores} cores, {UtcTime:yyyy-MM-dd HH:mm} UTC");
}

/// <summary>The machine the lab runs on.</summary>
public static class Machine
{
    /// <summary>
    /// The CPU model: /proc/cpuinfo's "model name" on Linux with its family and model numbers (a virtual machine may
    /// name only the brand), the processor architecture elsewhere; then the widest vectors the runtime accelerates.
    /// </summary>
    public static string CpuModel { get; } = ReadCpuModel() + " " + VectorWidth();

    private static string VectorWidth() =>
        System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "[AVX-512]" : System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "[AVX2]" : "[" + RuntimeInformation.ProcessArchitecture + "]";

    private static string ReadCpuModel()
    {
        string fallback = RuntimeInformation.ProcessArchitecture.ToString() + " (CPU model unknown)";
        try
        {
            if (!File.Exists("/proc/cpuinfo"))
            {
                return fallback;
            }

            // The first processor's block: "key : value" lines up to the first blank one.
            var fields = File.ReadLines("/proc/cpuinfo").TakeWhile(l => l.Trim().Length > 0).Where(l => l.Contains(':', StringComparison.Ordinal))
                .Select(l => (Key: l[..l.IndexOf(':', StringComparison.Ordinal)].Trim(), Value: l[(l.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim()))
                .GroupBy(f => f.Key).ToDictionary(g => g.Key, g => g.First().Value);
            if (!fields.TryGetValue("model name", out string? name))
            {
                return fallback;
            }

            return fields.TryGetValue("cpu family", out string? family) && fields.TryGetValue("model", out string? model)
                ? $"{name} (family {family}, model {model})"
                : name;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return fallback;
        }
    }
}
