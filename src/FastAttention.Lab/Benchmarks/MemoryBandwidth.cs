using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace FastAttention.Lab;

/// <summary>
/// The machine's read bandwidth: a buffer far larger than every cache (1 GiB), summed by all threads, one contiguous share
/// each, the best of a few passes. It is what a memory-bound call can at most reach, so benchmarks state their read rate
/// against it as well as against a plain read of their own inputs (which may sit in cache).
/// </summary>
public static class MemoryBandwidth
{
    /// <summary>The buffer size: 1 GiB, 32 times this CPU's L3 and more than any current CPU's caches.</summary>
    public const long BufferBytes = 1L << 30;

    private static readonly ConcurrentDictionary<int, double> Measured = new();

    /// <summary>
    /// Reads a 1 GiB buffer with <paramref name="threads"/> threads and returns the best of five passes in GB/s (10^9 bytes a
    /// second). Measured once per thread count and process: the buffer is allocated, filled and dropped each time, and the
    /// figure does not move with the inputs.
    /// </summary>
    /// <param name="threads">Reading threads; 0: all cores.</param>
    /// <returns>The read rate in GB/s.</returns>
    public static double Measure(int threads = 0)
    {
        threads = threads > 0 ? threads : Environment.ProcessorCount;
        return Measured.GetOrAdd(threads, Run);
    }

    private static double Run(int threads)
    {
        const int Passes = 5;
        uint[] buffer = GC.AllocateUninitializedArray<uint>((int)(BufferBytes / sizeof(uint)));
        long share = (buffer.LongLength + threads - 1) / threads;
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads };

        // Touch every page from the thread that reads it, so the timed passes read memory, not page faults.
        Parallel.For(0, threads, options, t => Share(buffer, t, share).Fill((uint)t));
        double best = 0;
        for (int pass = 0; pass < Passes; pass++)
        {
            long start = Stopwatch.GetTimestamp();
            Sink = ReadAll(buffer, threads, share, options);
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            best = Math.Max(best, BufferBytes / seconds / 1e9);
        }

        return best;
    }

    /// <summary>Sums every byte of <paramref name="arrays"/> (read as 32-bit words; a tail of under 4 bytes is skipped), each split into one contiguous share per thread.</summary>
    /// <param name="arrays">Arrays of any unmanaged element type.</param>
    /// <param name="threads">Reading threads.</param>
    internal static void ReadBytes(IReadOnlyList<Array> arrays, int threads)
    {
        ulong total = 0;
        object gate = new();
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            uint sum = 0;
            foreach (Array array in arrays)
            {
                // Buffer.ByteLength refuses Half[], which is no primitive: the size comes from the element type.
                int bytes = checked(array.Length * Marshal.SizeOf(array.GetType().GetElementType()!));
                Span<uint> words = MemoryMarshal.Cast<byte, uint>(MemoryMarshal.CreateSpan(ref MemoryMarshal.GetArrayDataReference(array), bytes));
                long share = (words.Length + threads - 1) / threads, start = Math.Min(words.Length, t * share);
                sum += TensorPrimitives.Sum<uint>(words.Slice((int)start, (int)Math.Min(share, words.Length - start)));
            }

            lock (gate)
            {
                total += sum;
            }
        });
        Sink = total;
    }

    private static ulong ReadAll(uint[] buffer, int threads, long share, ParallelOptions options)
    {
        ulong total = 0;
        object gate = new();
        Parallel.For(0, threads, options, t =>
        {
            uint sum = TensorPrimitives.Sum<uint>(Share(buffer, t, share));
            lock (gate)
            {
                total += sum;
            }
        });
        return total;
    }

    private static Span<uint> Share(uint[] buffer, int t, long share)
    {
        long start = Math.Min(buffer.LongLength, t * share);
        return buffer.AsSpan((int)start, (int)Math.Min(share, buffer.LongLength - start));
    }

    /// <summary>Keeps the sums alive so the JIT cannot drop the reads.</summary>
    private static ulong Sink { get; set; }
}
