using System.Diagnostics;
using System.Globalization;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>
/// A Stopwatch timer for prefill on keys and values stored in each type: one head, n queries and keys, d = dv, non-causal, causal and
/// causal with a sliding window of 256 keys (the window through the kernel itself: it is not a public option), 1 and 2 threads.
/// "kernel" times the registry kernel alone on pinned storage; "public" the whole typed <c>ExactAttention.Compute</c> call (which
/// also scans K and V for non-finite values and computes the storage error bound). The types take turns call by call, so a
/// shared machine's load falls on all of them alike; each ratio is to float32's time of the same statistic.
/// Run: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- prefill [seconds per case] [n] [d] [threads, e.g. 1,2]</c>. Times are "median (min)".
/// </summary>
public static unsafe class PrefillTimer
{
    public static void Run(string[] args)
    {
        double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 2.0;
        int n = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 4096;
        int d = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 64;
        int[] threadCounts = args.Length > 4 ? [.. args[4].Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture))] : [1, 2];
        Console.WriteLine($"{Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, n = {n}, d = dv = {d}, 1 head, {seconds} s per case");
        Console.WriteLine($"{"case",-11} {"thr",3} {"type",-5} {"kernel",-16} {"kernel ms median (min)",24} {"x f32",12} {"public ms median (min)",24} {"x f32",12}");
        var shape = AttentionShape.SingleHead(n, d);
        var random = new Random(7);
        float[] Fill(long length) => [.. Enumerable.Range(0, (int)length).Select(_ => (float)((random.NextDouble() * 2) - 1))];
        float[] q = Fill(shape.QueryLength), k = Fill(shape.KeyLength), v = Fill(shape.ValueLength);
        float[] output = new float[shape.OutputLength];
        KvElementType[] types = Enum.GetValues<KvElementType>();
        KvTensor[] keys = [.. types.Select(type => KvTensor.Encode(k, d, type))], values = [.. types.Select(type => KvTensor.Encode(v, d, type))];
        KvTensor.Pinned[] keyPins = [.. keys.Select(t => t.Pin(n))], valuePins = [.. values.Select(t => t.Pin(n))];
        try
        {
            fixed (float* qp = q, op = output)
            {
                foreach ((string name, bool causal, int window) in new[] { ("dense", false, 0), ("causal", true, 0), ("window 256", true, 256) })
                {
                    foreach (int threads in threadCounts)
                    {
                        var kernelCalls = new Action[types.Length];
                        var publicCalls = new Action[types.Length];
                        var names = new string[types.Length];
                        for (int i = 0; i < types.Length; i++)
                        {
                            AttentionArgs a = AttentionArgs.FromShape(shape);
                            a.Query = qp;
                            a.KeyStore = keyPins[i].Operand;
                            a.ValueStore = valuePins[i].Operand;
                            a.Key = a.KeyStore.IsContiguousFloat32 ? (float*)a.KeyStore.Data : null;
                            a.Value = a.ValueStore.IsContiguousFloat32 ? (float*)a.ValueStore.Data : null;
                            a.Output = op;
                            a.Scale = 1f / MathF.Sqrt(d);
                            a.Causal = causal;
                            a.Window = window;
                            a.MaxDegreeOfParallelism = threads;
                            AttentionKernel kernel = KernelRegistry.Select(null, in a);
                            names[i] = kernel.Name;
                            kernelCalls[i] = () => kernel.Run(a);
                            KvTensor key = keys[i], value = values[i];
                            var options = new ExactAttentionOptions { Causal = causal, MaxDegreeOfParallelism = threads };
                            publicCalls[i] = () => ExactAttention.Compute(q, key, value, shape, output, options);
                        }

                        List<double>[] direct = Alternate(seconds, kernelCalls);
                        List<double>[] whole = window > 0 ? [] : Alternate(seconds, publicCalls);
                        for (int i = 0; i < types.Length; i++)
                        {
                            Console.WriteLine($"{name,-11} {threads,3} {KvElementTypes.Name(types[i]),-5} {names[i],-16} {Stat(direct, i),24} {Ratio(direct, i),12} {Stat(whole, i),24} {Ratio(whole, i),12}");
                        }
                    }
                }
            }
        }
        finally
        {
            foreach (KvTensor.Pinned pin in keyPins.Concat(valuePins))
            {
                pin.Dispose();
            }
        }

        KvErrorTable.Print(q, k, v, shape, causal: false);
    }

    /// <summary>Times the calls in turn, round after round, for about <paramref name="seconds"/>; each call's times sorted.</summary>
    private static List<double>[] Alternate(double seconds, Action[] calls)
    {
        foreach (Action call in calls)
        {
            call();
            call();
        }

        List<double>[] times = [.. calls.Select(_ => new List<double>())];
        var total = Stopwatch.StartNew();
        while (times[0].Count < 5 || (total.Elapsed.TotalSeconds < seconds && times[0].Count < 2000))
        {
            for (int i = 0; i < calls.Length; i++)
            {
                long start = Stopwatch.GetTimestamp();
                calls[i]();
                times[i].Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }

        foreach (List<double> list in times)
        {
            list.Sort();
        }

        return times;
    }

    private static string Stat(List<double>[] times, int i) =>
        times.Length == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{times[i][times[i].Count / 2]:F3} ({times[i][0]:F3})");

    private static string Ratio(List<double>[] times, int i) =>
        times.Length == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{times[i][times[i].Count / 2] / times[0][times[0].Count / 2]:F2} ({times[i][0] / times[0][0]:F2})");
}
