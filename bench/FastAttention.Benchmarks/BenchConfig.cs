using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace FastAttention.Benchmarks;

/// <summary>The one configuration every benchmark class uses: a short in-process job and the GFLOP/s and %-of-peak columns.</summary>
public sealed class BenchConfig : ManualConfig
{
    public BenchConfig()
    {
        // In-process: the repository's artifacts-output layout was not one BenchmarkDotNet 0.14 could rebuild out of process (not retried with 0.15.8).
        AddJob(Job.ShortRun.WithWarmupCount(2).WithIterationCount(5).WithToolchain(InProcessEmitToolchain.Instance));
        AddColumn(new GflopsColumn(false), new GflopsColumn(true));
    }
}
