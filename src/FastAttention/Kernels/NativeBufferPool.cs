using System.Runtime.InteropServices;

namespace FastAttention.Kernels;

/// <summary>
/// 64-byte-aligned native buffers kept across calls. Freshly mapped memory costs a page fault per
/// 4 KiB page on first touch, and in a virtual machine those faults serialise across threads: a
/// kernel that allocated its packed K/V and tile scratch anew on every call spent milliseconds per
/// call faulting, and scaled poorly to two threads. Buffers return here after each call instead;
/// the pool keeps at most <see cref="MaxPooledBytes"/> in total and frees the rest.
/// </summary>
internal static unsafe class NativeBufferPool
{
    /// <summary>The most memory the pool keeps while idle.</summary>
    public const long MaxPooledBytes = 256L << 20;

    private static readonly object Gate = new();
    private static readonly List<(nint Pointer, long Bytes)> Free = [];
    private static long _pooledBytes;

    /// <summary>A buffer of at least <paramref name="floats"/> floats; contents are undefined.</summary>
    public static Buffer Rent(long floats)
    {
        long bytes = Math.Max(floats, 16) * sizeof(float);
        lock (Gate)
        {
            // Best fit: the smallest free buffer that is large enough.
            int best = -1;
            for (int i = 0; i < Free.Count; i++)
            {
                if (Free[i].Bytes >= bytes && (best < 0 || Free[i].Bytes < Free[best].Bytes))
                {
                    best = i;
                }
            }

            if (best >= 0)
            {
                (nint pointer, long size) = Free[best];
                Free.RemoveAt(best);
                _pooledBytes -= size;
                return new Buffer((float*)pointer, size);
            }
        }

        return new Buffer((float*)NativeMemory.AlignedAlloc((nuint)bytes, 64), bytes);
    }

    private static void Return(float* pointer, long bytes)
    {
        lock (Gate)
        {
            if (_pooledBytes + bytes <= MaxPooledBytes)
            {
                Free.Add(((nint)pointer, bytes));
                _pooledBytes += bytes;
                return;
            }
        }

        NativeMemory.AlignedFree(pointer);
    }

    /// <summary>A rented buffer; dispose to return it.</summary>
    internal readonly struct Buffer(float* pointer, long bytes) : IDisposable
    {
        public float* Pointer { get; } = pointer;

        public void Dispose() => Return(Pointer, bytes);
    }
}
