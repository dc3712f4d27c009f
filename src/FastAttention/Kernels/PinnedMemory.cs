using System.Buffers;

namespace FastAttention.Kernels;

/// <summary>
/// Memory over a pointer its creator keeps fixed (a span inside <c>fixed</c>) for as long as the memory is used: the order-3
/// span overloads of <see cref="TensorAttention"/> pass their inputs to the list-based checks and engine through it
/// instead of copying each matrix to an array on every call (four large-object allocations per training step).
/// </summary>
internal sealed unsafe class PinnedMemory(float* pointer, int length) : MemoryManager<float>
{
    /// <summary>Read-only memory over a fixed span's first element.</summary>
    public static ReadOnlyMemory<float> Over(float* pointer, int length) => new PinnedMemory(pointer, length).Memory;

    /// <inheritdoc/>
    public override Span<float> GetSpan() => new(pointer, length);

    /// <inheritdoc/>
    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

    /// <inheritdoc/>
    public override void Unpin()
    {
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
    }
}
