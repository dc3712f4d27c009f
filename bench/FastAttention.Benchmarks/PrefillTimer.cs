using System.Diagnostics;
using System.Globalization;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>
/// A Stopwatch timer for prefill on keys and values stored in each type: one head, n queries and keys, d = dv, non-causal, causal and
/// causal with a sliding window of 256 keys (the window through the kernel itself: it is not a public option), 1 and 2 threads.
/// "kernel" times the registry kernel alone on pinned storage; "public" the whole typed <c>ExactAttention.Compute</c> call (which
/// also scans K and V for non-finite values and computes the storage error bound).
/// Run: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- prefill [seconds per case] [n] [d]</c>. Times are "median (min)".
/// </summary>
public static unsafe class PrefillTimer
{
    public static void Run(string[] args)
    {
        double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 1.0;
        int n = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 4096;
        int d = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 64;
        Console.WriteLine($"{Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, n = {n}, d = dv = {d}, 1 head, {seconds} s per case");
        Console.WriteLine($"{"type",-5} {"case",-14} {"thr",3} {"kernel",-16} {"kernel ms (min)",20} {"public ms (min)",20}");
        var shape = AttentionShape.SingleHead(n, d);
        var random = new Random(7);
        float[] Fill(long length) => [.. Enumerable.Range(0, (int)length).Select(_ => (float)((random.NextDouble() * 2) - 1))];
        float[] q = Fill(shape.QueryLength), k = Fill(shape.KeyLength), v = Fill(shape.ValueLength);
        float[] output = new float[shape.OutputLength];
        foreach ((string name, bool causal, int window) in new[] { ("dense", false, 0), ("causal", true, 0), ("window 256", true, 256) })
        {
            foreach (int threads in new[] { 1, 2 })
            {
                foreach (KvElementType type in Enum.GetValues<KvElementType>())
                {
                    KvTensor key = KvTensor.Encode(k, d, type), value = KvTensor.Encode(v, d, type);
                    using KvTensor.Pinned keys = key.Pin(n);
                    using KvTensor.Pinned values = value.Pin(n);
                    fixed (float* qp = q, op = output)
                    {
                        AttentionArgs a = AttentionArgs.FromShape(shape);
                        a.Query = qp;
                        a.KeyStore = keys.Operand;
                        a.ValueStore = values.Operand;
                        a.Key = keys.Operand.IsContiguousFloat32 ? (float*)keys.Operand.Data : null;
                        a.Value = values.Operand.IsContiguousFloat32 ? (float*)values.Operand.Data : null;
                        a.Output = op;
                        a.Scale = 1f / MathF.Sqrt(d);
                        a.Causal = causal;
                        a.Window = window;
                        a.MaxDegreeOfParallelism = threads;
                        AttentionKernel kernel = KernelRegistry.Select(null, in a);
                        string direct = Time(seconds, () => kernel.Run(a));
                        var options = new ExactAttentionOptions { Causal = causal, MaxDegreeOfParallelism = threads };
                        string whole = window > 0 ? "-" : Time(seconds, () => ExactAttention.Compute(q, key, value, shape, output, options));
                        Console.WriteLine($"{KvElementTypes.Name(type),-5} {name,-14} {threads,3} {kernel.Name,-16} {direct,20} {whole,20}");
                    }
                }
            }
        }
    }

    internal static string Time(double seconds, Action call)
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
}
