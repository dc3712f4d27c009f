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
    /// <summary>The CPU model: /proc/cpuinfo's "model name" on Linux, the processor architecture elsewhere.</summary>
    public static string CpuModel { get; } = ReadCpuModel();

    private static string ReadCpuModel()
    {
        string fallback = RuntimeInformation.ProcessArchitecture.ToString() + " (CPU model unknown)";
        try
        {
            string? line = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal)) : null;
            return line is null ? fallback : line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return fallback;
        }
    }
}
