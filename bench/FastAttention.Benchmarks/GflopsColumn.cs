using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace FastAttention.Benchmarks;

/// <summary>A benchmark class that can state its flop count for a case (from the one shared <c>FlopCount</c>).</summary>
public interface IFlopCounted
{
    double Flops(IReadOnlyDictionary<string, object> parameters);
}

/// <summary>GFLOP/s and %-of-peak columns: the case's flop count over its mean time.</summary>
public sealed class GflopsColumn(bool percentOfPeak) : IColumn
{
    /// <summary>Nominal fp32 FMA peak per thread of the AMD EPYC Zen 5 VM the committed reports were measured on (~270 GFLOP/s,
    /// 512-bit FMA); other CPUs differ (a Zen 3 core with AVX2 measures 95-100), and <c>fastattn bench</c> measures the peak on the spot.</summary>
    public const double PeakPerThread = 270;

    public string Id => percentOfPeak ? "PercentOfPeak" : "GFLOPs";

    public string ColumnName => percentOfPeak ? "%peak" : "GFLOP/s";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => percentOfPeak ? 1 : 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => percentOfPeak ? "GFLOP/s over threads x 270 GFLOP/s" : "flops (4 n^2 d per head) / mean time";

    public bool IsAvailable(Summary summary) => true;

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        if (Activator.CreateInstance(benchmarkCase.Descriptor.Type) is not IFlopCounted counted || summary[benchmarkCase]?.ResultStatistics is not { } stats)
        {
            return "-";
        }

        var parameters = benchmarkCase.Parameters.Items.ToDictionary(p => p.Name, p => p.Value);
        double gflops = counted.Flops(parameters) / stats.Mean; // flops per ns = GFLOP/s
        if (!percentOfPeak)
        {
            return gflops.ToString("F1", System.Globalization.CultureInfo.InvariantCulture);
        }

        int threads = parameters.TryGetValue("Threads", out object? t) ? (int)t : Environment.ProcessorCount;
        return (100 * gflops / (PeakPerThread * threads)).ToString("F0", System.Globalization.CultureInfo.InvariantCulture) + "%";
    }
}
