using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace FastAttention.Benchmarks;

/// <summary>
/// A Stopwatch timer (not BenchmarkDotNet: one line per case in seconds, not minutes) for exact order-3 tensor attention on
/// many small heads, the training shape: forward (with log-sum-exp) and backward, 1 and 2 threads, median of the timed calls.
/// Each line ends with a hash of the output and gradient bits, so runs before and after a change can be compared bit for bit.
/// Run: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- tensor-heads [seconds per case] [case name starts with] [threads, e.g. 1,2] [forward|backward: time one pass only]</c>.
/// Times are "median (min)": on a machine shared with other work the minimum is the steadier figure.
/// </summary>
public static class TensorHeadsTimer
{
    private static readonly (string Name, TensorAttentionShape Shape, TensorAttentionOptions Options)[] Cases =
    [
        ("[64,12,64]", new(64, 12, 12, 64, 64), default),
        ("[64,32,64]", new(64, 32, 32, 64, 64), default),
        ("[64,64,64]", new(64, 64, 64, 64, 64), default),
        ("[256,32,32]", new(256, 32, 32, 32, 32), default),
        ("[64,64,64] causal", new(64, 64, 64, 64, 64), new() { Causal = true }),
        ("[64,64,64] window (16,8)", new(64, 64, 64, 64, 64), new() { Windows = [16, 8] }),
        ("[1,256,64] (one large head)", new(1, 256, 256, 64, 64), default),
    ];

    public static void Run(string[] args)
    {
        double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 1.0;
        Console.WriteLine($"{RuntimeInformation.OSArchitecture} {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {seconds} s per case");
        string only = args.Length > 2 ? args[2] : "", pass = args.Length > 4 ? args[4] : "";
        int[] threadCounts = args.Length > 3 ? [.. args[3].Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture))] : [1, 2];
        Console.WriteLine($"{"case",-30} {"thr",3} {"forward ms (min)",20} {"backward ms (min)",20}  bits");
        foreach ((string name, TensorAttentionShape shape, TensorAttentionOptions baseOptions) in Cases.Where(c => c.Name.StartsWith(only, StringComparison.Ordinal)))
        {
            foreach (int threads in threadCounts)
            {
                TensorAttentionOptions options = baseOptions with { MaxDegreeOfParallelism = threads };
                var random = new Random(7);
                float[] Fill(long length) => [.. Enumerable.Range(0, (int)length).Select(_ => (float)((random.NextDouble() * 2) - 1))];
                float[] q = Fill(shape.QueryLength), k1 = Fill(shape.KeyLength), k2 = Fill(shape.KeyLength), v1 = Fill(shape.ValueLength), v2 = Fill(shape.ValueLength), dO = Fill(shape.OutputLength);
                float[] o = new float[shape.OutputLength], lse = new float[shape.HeadCount * shape.QueryCount];
                float[] dq = new float[q.Length], dk1 = new float[k1.Length], dk2 = new float[k2.Length], dv1 = new float[v1.Length], dv2 = new float[v2.Length];
                string forward = pass == "backward" ? "-" : Time(seconds, () => TensorAttention.Compute(q, k1, k2, v1, v2, shape, o, lse, options));
                if (pass == "backward")
                {
                    TensorAttention.Compute(q, k1, k2, v1, v2, shape, o, lse, options);
                }

                string backward = pass == "forward" ? "-" : Time(seconds, () => TensorAttention.Backward(q, k1, k2, v1, v2, o, dO, lse, shape, dq, dk1, dk2, dv1, dv2, options));
                Console.WriteLine($"{name,-30} {threads,3} {forward,20} {backward,20}  {Hash(o, lse, dq, dk1, dk2, dv1, dv2):x16}");
            }
        }
    }

    private static string Time(double seconds, Action call)
    {
        call();
        call();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < 5 || (total.Elapsed.TotalSeconds < seconds && times.Count < 2000))
        {
            long start = Stopwatch.GetTimestamp();
            call();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        times.Sort();
        return string.Create(CultureInfo.InvariantCulture, $"{times[times.Count / 2]:F3} ({times[0]:F3})");
    }

    private static ulong Hash(params float[][] arrays)
    {
        ulong hash = 14695981039346656037UL;
        foreach (float[] array in arrays)
        {
            foreach (float x in array)
            {
                hash = (hash ^ BitConverter.SingleToUInt32Bits(x)) * 1099511628211UL;
            }
        }

        return hash;
    }
}
