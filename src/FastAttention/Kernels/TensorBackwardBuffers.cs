namespace FastAttention.Kernels;

/// <summary>
/// Native buffers the order-3 backward (<see cref="TensorBackwardKernel{TS, TV}"/>) keeps across the heads one worker runs:
/// a few slots, each re-rented from <see cref="NativeBufferPool"/> only when a head needs more than it holds. Many small heads
/// then cost one rental per worker instead of three per head.
/// </summary>
internal sealed unsafe class TensorBackwardBuffers : IDisposable
{
    private readonly NativeBufferPool.Buffer[] _buffers = new NativeBufferPool.Buffer[3];
    private readonly long[] _floats = new long[3];
    private double[] _sums = [];

    /// <summary>A double buffer of at least <paramref name="length"/> elements for the chunk sums; contents are undefined.</summary>
    public double[] Sums(int length)
    {
        if (_sums.Length < length)
        {
            _sums = new double[length];
        }

        return _sums;
    }

    /// <summary>Slot <paramref name="slot"/> with room for at least <paramref name="floats"/> floats; contents are undefined.</summary>
    public float* Get(int slot, long floats)
    {
        if (_floats[slot] < floats)
        {
            if (_floats[slot] > 0)
            {
                _buffers[slot].Dispose();
            }

            _buffers[slot] = NativeBufferPool.Rent(floats);
            _floats[slot] = floats;
        }

        return _buffers[slot].Pointer;
    }

    /// <summary>Slot <paramref name="slot"/> as a lease that does not return it (the buffers still own it).</summary>
    public Lease Borrow(int slot, long floats) => new(Get(slot, floats), owned: false);

    /// <inheritdoc/>
    public void Dispose()
    {
        for (int slot = 0; slot < _buffers.Length; slot++)
        {
            if (_floats[slot] > 0)
            {
                _buffers[slot].Dispose();
                _floats[slot] = 0;
            }
        }
    }

    /// <summary>A worker's scratch: borrowed from the buffers (one thread) or rented for the worker's lifetime.</summary>
    internal sealed class Lease : IDisposable
    {
        private readonly NativeBufferPool.Buffer _rented;
        private readonly bool _owned;

        public Lease(float* pointer, bool owned)
        {
            Pointer = pointer;
            _owned = owned;
        }

        private Lease(NativeBufferPool.Buffer rented)
            : this(rented.Pointer, owned: true) => _rented = rented;

        public float* Pointer { get; }

        /// <summary>A fresh buffer of <paramref name="floats"/> floats from the pool, returned on dispose.</summary>
        public static Lease Rent(long floats) => new(NativeBufferPool.Rent(floats));

        public void Dispose()
        {
            if (_owned)
            {
                _rented.Dispose();
            }
        }
    }
}
