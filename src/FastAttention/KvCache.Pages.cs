using System.Runtime.InteropServices;
using FastAttention.Kernels;

namespace FastAttention;

// The cache's pages: allocation, the page table, rows encoded into the storage type, and slot moves.
public sealed unsafe partial class KvCache
{
    /// <summary>
    /// Every stored key (or value) of the first <paramref name="count"/> tokens widened to float32, <c>[kvHeads, count, rowLength]</c>,
    /// read through the same paged operand the kernels get (for tests).
    /// </summary>
    internal float[] Widened(bool values, int count)
    {
        PageTable table = Volatile.Read(ref _table);
        int rowLength = values ? _valueDim : _headDim;
        var result = new float[(long)_kvHeads * count * rowLength];
        fixed (nint* pages = values ? table.Values : table.Keys)
        fixed (nint* scales = values ? table.ValueScales : table.KeyScales)
        fixed (float* o = result)
        {
            KvOperand operand = Operand(count, table.Capacity, pages, scales, rowLength);
            for (int g = 0; g < _kvHeads; g++)
            {
                for (int j = 0; j < count; j++)
                {
                    operand.WidenRow(g, j, o + ((((long)g * count) + j) * rowLength));
                }
            }
        }

        GC.KeepAlive(this);
        return result;
    }

    /// <summary>The address of page <paramref name="page"/> of kv head <paramref name="kvHead"/> (for tests: pages never move).</summary>
    internal nint PageAddress(int kvHead, int page)
    {
        PageTable table = Volatile.Read(ref _table);
        return table.Keys[((long)kvHead * table.Capacity) + page];
    }

    /// <summary>Widens the stored key of token <paramref name="slot"/> of kv head <paramref name="kvHead"/> into <paramref name="destination"/> (d floats).</summary>
    internal void WidenKey(int kvHead, int slot, Span<float> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        fixed (float* o = destination)
        {
            KvWiden.Row(_type, KeyRow(_table, kvHead, slot), KeyScales(_table, kvHead, slot), _headDim, o);
        }

        GC.KeepAlive(this);
    }

    /// <summary>Moves the last token into slot <paramref name="slot"/> and drops the last (the writer only; no reader may run).</summary>
    internal void RemoveAt(int slot)
    {
        int last = _count - 1;
        if (slot != last)
        {
            Swap(slot, last);
        }

        Volatile.Write(ref _count, last);
    }

    /// <summary>Exchanges the stored bytes of tokens <paramref name="a"/> and <paramref name="b"/> in every kv head (the writer only; no reader may run).</summary>
    internal void Swap(int a, int b)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (a == b)
        {
            return;
        }

        PageTable table = _table;
        int size = KvElementTypes.SizeOf(_type);
        for (int g = 0; g < _kvHeads; g++)
        {
            SwapBytes(KeyRow(table, g, a), KeyRow(table, g, b), _headDim * size);
            SwapBytes(ValueRow(table, g, a), ValueRow(table, g, b), _valueDim * size);
            if (_type == KvElementType.Q8)
            {
                SwapBytes((byte*)KeyScales(table, g, a), (byte*)KeyScales(table, g, b), Blocks(_headDim) * sizeof(Half));
                SwapBytes((byte*)ValueScales(table, g, a), (byte*)ValueScales(table, g, b), Blocks(_valueDim) * sizeof(Half));
            }
        }

        GC.KeepAlive(this);
    }

    /// <summary>The first <paramref name="count"/> rows of every kv head as a paged operand over a pinned page table.</summary>
    private KvOperand Operand(int count, int capacity, nint* pages, nint* scalePages, int rowLength) => new()
    {
        Type = _type,
        Pages = (byte**)pages,
        ScalePages = _type == KvElementType.Q8 ? (Half**)scalePages : null,
        PageRows = _pageRows,
        PagesPerGroup = capacity,
        Rows = count,
        RowLength = rowLength,
    };

    private static long Align(long bytes) => (bytes + Alignment - 1) / Alignment * Alignment;

    private static int Blocks(int rowLength) => (rowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block;

    private static void SwapBytes(byte* x, byte* y, int length)
    {
        var a = new Span<byte>(x, length);
        var b = new Span<byte>(y, length);
        Span<byte> held = length <= 1024 ? stackalloc byte[length] : new byte[length];
        a.CopyTo(held);
        b.CopyTo(a);
        held.CopyTo(b);
    }

    /// <summary>
    /// One row rounded into the storage type, as <see cref="KvTensor.Encode"/> rounds it (to nearest, ties to even; q8 scales
    /// are the block's largest magnitude over 127 rounded up to a float16), so the cache stores the same bits a tensor would.
    /// </summary>
    private void EncodeRow(ReadOnlySpan<float> source, byte* row, Half* scales, string name, int kvHead, int token)
    {
        switch (_type)
        {
            case KvElementType.Float32:
                source.CopyTo(new Span<float>(row, source.Length));
                break;
            case KvElementType.Float16:
            {
                // Round to nearest even, as the (Half) conversion KvTensor.Encode uses; a finite input that rounds to infinity is out of range.
                var halves = new Span<Half>(row, source.Length);
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(source, halves);
                for (int c = 0; c < source.Length; c++)
                {
                    if (Half.IsInfinity(halves[c]))
                    {
                        OutOfRange(name, source[c], kvHead, token, c, "|x| <= 65504 for float16", "store these keys or values as bf16 or f32");
                    }
                }

                break;
            }

            case KvElementType.BFloat16:
                for (int c = 0; c < source.Length; c++)
                {
                    ushort bits = KvTensor.ToBFloat16(source[c]);
                    if ((bits & 0x7fff) == 0x7f80)
                    {
                        // A finite value within half a bfloat16 step of float's largest rounds to infinity.
                        OutOfRange(name, source[c], kvHead, token, c, "|x| < 3.3961e38 for bfloat16", "store these keys or values as f32");
                    }

                    ((ushort*)row)[c] = bits;
                }

                break;
            default:
                for (int c0 = 0, blk = 0; c0 < source.Length; c0 += KvOperand.Q8Block, blk++)
                {
                    ReadOnlySpan<float> block = source.Slice(c0, Math.Min(KvOperand.Q8Block, source.Length - c0));
                    float max = 0f;
                    for (int c = 0; c < block.Length; c++)
                    {
                        max = Math.Max(max, Math.Abs(block[c]));
                    }

                    Half scale = KvTensor.Q8Scale(max);
                    if (Half.IsInfinity(scale))
                    {
                        int at = c0;
                        for (int c = 0; c < block.Length; c++)
                        {
                            at = Math.Abs(block[c]) == max ? c0 + c : at;
                        }

                        OutOfRange(name, source[at], kvHead, token, at, "|x| <= 65504 x 127 for q8's float16 block scales", "store these keys or values as bf16 or f32");
                    }

                    scales[blk] = scale;
                    float s = (float)scale;
                    for (int c = 0; c < block.Length; c++)
                    {
                        ((sbyte*)row)[c0 + c] = s == 0f ? (sbyte)0 : (sbyte)Math.Clamp(MathF.Round(block[c] / s, MidpointRounding.ToEven), -127f, 127f);
                    }
                }

                break;
        }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void OutOfRange(string name, float value, int kvHead, int token, int column, string expected, string hint) =>
        Validate.Fail(name, $"a value lies outside the range of {KvElementTypes.Name(_type)}", $"{NumberText.Format(value, 6)} at [kv head {kvHead}, token {token}, column {column}]", expected, hint);

    /// <summary>Allocates pages until every kv head holds <paramref name="rows"/> tokens; the table is replaced (not changed in place) when it must grow.</summary>
    private void EnsurePages(int rows)
    {
        int needed = (int)(((long)rows + _pageRows - 1) / _pageRows);
        if (needed > _table.Capacity)
        {
            // Readers may hold the old table: build a new one and publish it whole; the pages it points at stay where they are.
            Volatile.Write(ref _table, _table.Grow(Math.Max(needed, Math.Max(4, 2 * _table.Capacity)), _kvHeads));
        }

        PageTable table = _table;
        for (; _pages < needed; _pages++)
        {
            for (int g = 0; g < _kvHeads; g++)
            {
                long at = ((long)g * table.Capacity) + _pages;
                if (table.Keys[at] != 0)
                {
                    continue;
                }

                // Zeroed so that no uninitialised bits (a NaN pattern) ever sit inside a page a kernel reads.
                byte* block = (byte*)NativeMemory.AlignedAlloc((nuint)_pageBytes, Alignment);
                NativeMemory.Clear(block, (nuint)_pageBytes);
                table.Keys[at] = (nint)block;
                table.Values[at] = (nint)(block + _valueOffset);
                if (_type == KvElementType.Q8)
                {
                    table.KeyScales[at] = (nint)(block + _keyScaleOffset);
                    table.ValueScales[at] = (nint)(block + _valueScaleOffset);
                }

                Volatile.Write(ref _blocks, _blocks + 1);
            }
        }
    }

    private byte* KeyRow(PageTable table, int g, int j) =>
        (byte*)table.Keys[((long)g * table.Capacity) + (j / _pageRows)] + ((long)(j % _pageRows) * _headDim * KvElementTypes.SizeOf(_type));

    private byte* ValueRow(PageTable table, int g, int j) =>
        (byte*)table.Values[((long)g * table.Capacity) + (j / _pageRows)] + ((long)(j % _pageRows) * _valueDim * KvElementTypes.SizeOf(_type));

    private Half* KeyScales(PageTable table, int g, int j) => _type != KvElementType.Q8
        ? null
        : (Half*)table.KeyScales[((long)g * table.Capacity) + (j / _pageRows)] + ((long)(j % _pageRows) * Blocks(_headDim));

    private Half* ValueScales(PageTable table, int g, int j) => _type != KvElementType.Q8
        ? null
        : (Half*)table.ValueScales[((long)g * table.Capacity) + (j / _pageRows)] + ((long)(j % _pageRows) * Blocks(_valueDim));

    private void Free()
    {
        // A constructor that threw leaves no table for the finaliser.
        if (_disposed || _table is null)
        {
            return;
        }

        _disposed = true;
        foreach (nint block in _table.Keys)
        {
            if (block != 0)
            {
                NativeMemory.AlignedFree((void*)block);
            }
        }

        _blocks = 0;
    }

    /// <summary>
    /// Page addresses, <c>[kvHeads, Capacity]</c> (page p of kv head g at <c>g Capacity + p</c>, the layout of
    /// <see cref="KvOperand.Pages"/>): the keys', the values' and (q8) their scales', all inside one allocation per (kv head, page).
    /// Managed arrays, so a reader that snapshotted an old table keeps it alive as long as it needs it.
    /// </summary>
    internal sealed class PageTable(int capacity, int kvHeads, bool scales)
    {
        public int Capacity { get; } = capacity;

        /// <summary>Whether the table has the q8 scale arrays.</summary>
        public bool HasScales { get; } = scales;

        public nint[] Keys { get; } = new nint[(long)capacity * kvHeads];

        public nint[] Values { get; } = new nint[(long)capacity * kvHeads];

        /// <summary>q8 only; empty otherwise.</summary>
        public nint[] KeyScales { get; } = scales ? new nint[(long)capacity * kvHeads] : [];

        /// <summary>q8 only; empty otherwise.</summary>
        public nint[] ValueScales { get; } = scales ? new nint[(long)capacity * kvHeads] : [];

        public long Bytes => (long)(Keys.Length + Values.Length + KeyScales.Length + ValueScales.Length) * sizeof(nint);

        /// <summary>A table of <paramref name="grown"/> pages per kv head holding this one's entries.</summary>
        public PageTable Grow(int grown, int kvHeads)
        {
            var table = new PageTable(grown, kvHeads, HasScales);
            for (int g = 0; g < kvHeads; g++)
            {
                Array.Copy(Keys, (long)g * Capacity, table.Keys, (long)g * grown, Capacity);
                Array.Copy(Values, (long)g * Capacity, table.Values, (long)g * grown, Capacity);
                if (HasScales)
                {
                    Array.Copy(KeyScales, (long)g * Capacity, table.KeyScales, (long)g * grown, Capacity);
                    Array.Copy(ValueScales, (long)g * Capacity, table.ValueScales, (long)g * grown, Capacity);
                }
            }

            return table;
        }
    }
}
