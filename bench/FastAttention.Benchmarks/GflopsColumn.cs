using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace FastAttention.Benchmarks;

/// <summary>A benchmark class that can state its flop count for a case (from the one shared <c>FlopCount</c>).</summary>
public interface IFlopCounted
{
    double Flops(IReadOnlyDictionary<string, object> parameters);

    /// <summary>The flops of one benchmark method of the class, when its methods differ (a forward + backward pair and the backward alone).</summary>
    double Flops(string method, IReadOnlyDictionary<string, object> parameters) => Flops(parameters);
}

/// <summary>GFLOP/s and %-of-peak columns: the case's flop count over its mean time.</summary>
public sealed class GflopsColumn(bool percentOfPeak) : IColumn
{
    /// <summary>The fp32 FMA peak of this machine for a thread count, measured on the spot (<see cref="FmaPeak.Measure"/>) when the summary is
    /// printed: a nominal figure would be another CPU's (these machines change CPU between days).</summary>
    public static double Peak(int threads) => FmaPeak.Measure(threads);

    public string Id => percentOfPeak ? "PercentOfPeak" : "GFLOPs";

    public string ColumnName => percentOfPeak ? "%peak" : "GFLOP/s";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => percentOfPeak ? 1 : 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => percentOfPeak ? "GFLOP/s over the FMA peak measured on the spot for the thread count" : "flops (4 n^2 d per head) / mean time";

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
        double gflops = counted.Flops(benchmarkCase.Descriptor.WorkloadMethod.Name, parameters) / stats.Mean; // flops per ns = GFLOP/s
        if (!percentOfPeak)
        {
            return gflops.ToString("F1", System.Globalization.CultureInfo.InvariantCulture);
        }

        int threads = parameters.TryGetValue("Threads", out object? t) ? (int)t : Environment.ProcessorCount;
        return (100 * gflops / Peak(threads)).ToString("F0", System.Globalization.CultureInfo.InvariantCulture) + "%";
    }
}
