using BenchmarkDotNet.Running;

namespace FastAttention.Benchmarks;

/// <summary>Runs the benchmarks: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- --filter '*'</c>; <c>-- tensor-heads</c> runs <see cref="TensorHeadsTimer"/>,
/// <c>-- decode-kv</c> <see cref="DecodeKvTimer"/>, <c>-- prefill</c> <see cref="PrefillTimer"/>, <c>-- passes</c> <see cref="PassTimer"/>,
/// <c>messages</c> (under mpiexec) <see cref="MessageRateTimer"/>, <c>ring</c> (under mpiexec) <see cref="RingBenchmark"/>.</summary>
public static class Program
{
    public static void Main(string[] args)
    {
        if (args is ["tensor-heads", ..])
        {
            TensorHeadsTimer.Run(args); // a Stopwatch timer, not BenchmarkDotNet
            return;
        }

        if (args is ["decode-kv", ..])
        {
            DecodeKvTimer.Run(args); // a Stopwatch timer of the decoding kernel per storage type
            return;
        }

        if (args is ["prefill", ..])
        {
            PrefillTimer.Run(args);
            return;
        }

        if (args is ["passes", ..])
        {
            PassTimer.Run(args);
            return;
        }

        if (args is ["messages", ..])
        {
            MessageRateTimer.Run(args); // under mpiexec: message latency and bandwidth for the distributed cost model
            return;
        }

        if (args is ["ring", ..])
        {
            RingBenchmark.Run(args); // under mpiexec: one line per rank of ring attention's compute, wait and bytes
            return;
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
    }
}
