using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FastAttention.Kernels;

namespace FastAttention.Benchmarks;

/// <summary>
/// A Stopwatch timer for the split-key decoding kernel on keys and values stored in each type: one query per head against a
/// long cache, multi-head (32 heads) and grouped-query (32 query heads on 8 kv heads), d = 128. It calls the kernel itself (as
/// <c>ExactAttention.Compute</c> does after validation, with the in-cache finiteness check on) so that the times are the
/// kernel's reads of K and V, not the per-call error bound of the public typed entry. Bytes are those stored (q8 scales
/// included); the rate is set against the best plain summing read of a 1 GiB buffer (same threads) timed in the same run, before the
/// cases and again after each (the machine is shared, and a slow moment would flatter the kernel).
/// Each line ends with a hash of the output bits, so 1 and 2 threads (and runs before and after a change) compare bit for bit.
/// Run: <c>dotnet run -c Release --project bench/FastAttention.Benchmarks -- decode-kv [seconds per case] [threads, e.g. 1,2] [types, e.g. f32,q8] [nk] [errors]</c>
/// (<c>errors</c> adds the MHA case's error table, <see cref="KvErrorTable"/>).
/// </summary>
public static unsafe class DecodeKvTimer
{
    private const long PlainReadBytes = 1L << 30;

    public static void Run(string[] args)
    {
        double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 2.0;
        int[] threadCounts = args.Length > 2 ? [.. args[2].Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture))] : [2];
        string[] types = args.Length > 3 ? args[3].Split(',') : ["f32", "f16", "bf16", "q8"];
        int nk = args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 32768;
        bool errors = args.Contains("errors");
        const int heads = 32, d = 128;
        string cpu = File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "?"
            : RuntimeInformation.ProcessArchitecture.ToString();
        Console.WriteLine($"{cpu}, {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, nk = {nk}, d = {d}, {heads} query heads, 1 query, {seconds} s per case");

        var plain = new Dictionary<int, double>();
        foreach (int threads in threadCounts)
        {
            plain[threads] = PlainRead(threads, seconds);
            Console.WriteLine($"plain read of 1 GiB, {threads} thread(s): {plain[threads]:F1} GB/s");
        }

        Console.WriteLine($"{"case",-6} {"type",-5} {"kernel",-20} {"thr",3} {"ms median (min)",18} {"MB",8} {"GB/s",6} {"% plain",7}  bits");
        foreach ((string name, int kvHeads) in new[] { ("MHA", heads), ("GQA", 8) })
        {
            var shape = new AttentionShape(1, heads, 1, nk, d, d, kvHeads);
            float[] q = Fill(shape.QueryLength, 1), k = Fill(shape.KeyLength, 2), v = Fill(shape.ValueLength, 3);
            foreach (string typeName in types)
            {
                if (!KvElementTypes.TryParse(typeName, out KvElementType type))
                {
                    throw new ArgumentException($"unknown type '{typeName}'", nameof(args));
                }

                KvTensor key = KvTensor.Encode(k, d, type), value = KvTensor.Encode(v, d, type);
                double bytes = key.ByteCount + value.ByteCount;
                foreach (int threads in threadCounts)
                {
                    var o = new float[shape.OutputLength];
                    (string kernel, double median, double min) = Time(q, key, value, shape, o, threads, seconds);
                    double rate = bytes / (min * 1e-3) / 1e9;
                    plain[threads] = Math.Max(plain[threads], PlainRead(threads, 0.3)); // the machine is shared: the best plain read seen so far
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{name,-6} {typeName,-5} {kernel,-20} {threads,3} {$"{median:F2} ({min:F2})",18} {bytes / 1e6,8:F0} {rate,6:F1} {100 * rate / plain[threads],6:F0}%  {Hash(o):x16}"));
                }
            }

            if (name == "MHA" && errors)
            {
                KvErrorTable.Print(q, k, v, shape, causal: false);
            }
        }
    }

    private static (string Kernel, double Median, double Min) Time(float[] query, KvTensor key, KvTensor value, AttentionShape shape, float[] output, int threads, double seconds)
    {
        using KvTensor.Pinned keys = key.Pin(shape.KeyCount);
        using KvTensor.Pinned values = value.Pin(shape.KeyCount);
        long* first = stackalloc long[2];
        fixed (float* q = query)
        fixed (float* o = output)
        {
            AttentionArgs a = AttentionArgs.FromShape(shape);
            a.Query = q;
            a.KeyStore = keys.Operand;
            a.ValueStore = values.Operand;
            a.Key = keys.Operand.IsContiguousFloat32 ? (float*)keys.Operand.Data : null;
            a.Value = values.Operand.IsContiguousFloat32 ? (float*)values.Operand.Data : null;
            a.Output = o;
            a.Scale = 1f / MathF.Sqrt(shape.HeadDim);
            a.MaxDegreeOfParallelism = threads;
            a.FirstNonFinite = first;
            AttentionKernel kernel = KernelRegistry.Select(null, in a);
            var times = new List<double>();
            var total = Stopwatch.StartNew();
            for (int warm = 0; warm < 2; warm++)
            {
                first[0] = first[1] = long.MaxValue;
                kernel.Run(a);
            }

            while (times.Count < 5 || (total.Elapsed.TotalSeconds < seconds && times.Count < 500))
            {
                first[0] = first[1] = long.MaxValue;
                long start = Stopwatch.GetTimestamp();
                kernel.Run(a);
                times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }

            if (first[0] != long.MaxValue || first[1] != long.MaxValue)
            {
                throw new InvalidOperationException($"{kernel.Name} reported a non-finite input on finite data");
            }

            times.Sort();
            return (kernel.Name, times[times.Count / 2], times[0]);
        }
    }

    /// <summary>GB/s of a plain summing read of a 1 GiB buffer split over <paramref name="threads"/> threads: the best of the timed passes.</summary>
    private static double PlainRead(int threads, double seconds)
    {
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)PlainReadBytes, 64);
        try
        {
            long count = PlainReadBytes / sizeof(float);
            new Span<float>(buffer, (int)count).Fill(1f);
            long perThread = count / threads;
            var options = new ParallelOptions { MaxDegreeOfParallelism = threads };
            double best = double.MaxValue;
            float sink = 0;
            var total = Stopwatch.StartNew();
            int passes = 0;
            while (passes < 5 || (total.Elapsed.TotalSeconds < seconds && passes < 100))
            {
                var sums = new float[threads];
                long start = Stopwatch.GetTimestamp();
                Parallel.For(0, threads, options, t => sums[t] = Sum(buffer + (t * perThread), perThread));
                best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
                sink += sums.Sum();
                passes++;
            }

            return sink == 0 ? 0 : PlainReadBytes / best / 1e9;
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    private static float Sum(float* x, long count)
    {
        // Prefetched 4 KiB ahead as the kernel's reads of K are: without it this loop read slower than the kernel did.
        Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
        for (long i = 0; i + 64 <= count; i += 64)
        {
            if (System.Runtime.Intrinsics.X86.Sse.IsSupported)
            {
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(x + i + 1024);
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(x + i + 1040);
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(x + i + 1056);
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(x + i + 1072);
            }

            a0 += Vector512.Load(x + i);
            a1 += Vector512.Load(x + i + 16);
            a2 += Vector512.Load(x + i + 32);
            a3 += Vector512.Load(x + i + 48);
        }

        return Vector512.Sum(a0 + a1 + a2 + a3);
    }

    private static float[] Fill(long length, int seed)
    {
        var random = new Random(seed);
        var x = new float[length];
        for (long i = 0; i < length; i++)
        {
            x[i] = (float)((random.NextDouble() * 2) - 1);
        }

        return x;
    }

    private static ulong Hash(float[] array)
    {
        ulong hash = 14695981039346656037UL;
        foreach (float x in array)
        {
            hash = (hash ^ BitConverter.SingleToUInt32Bits(x)) * 1099511628211UL;
        }

        return hash;
    }
}
