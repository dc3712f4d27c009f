using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FastAttention.Kernels;

/// <summary>
/// A key or value operand as the kernels read it: <c>groups = batch kvHeads</c> groups of <see cref="Rows"/> rows of
/// <see cref="RowLength"/> elements of <see cref="Type"/>, either contiguous (<c>[groups, rows, rowLength]</c>, C-order) or in
/// pages of <see cref="PageRows"/> rows (a decoding cache: page <c>p</c> of group <c>g</c> is <c>Pages[g PagesPerGroup + p]</c>,
/// itself <c>[PageRows, rowLength]</c>). A q8 operand carries one scale per block of <see cref="Q8Block"/> elements of a row
/// (<c>ceil(rowLength / 32)</c> scales per row, laid out like the rows: contiguous or in pages of their own).
/// Element <c>t</c> of a q8 row is <c>values[t] scale[t / 32]</c>.
/// </summary>
internal unsafe struct KvOperand
{
    /// <summary>Elements per q8 scale block (llama.cpp's q8_0 uses 32).</summary>
    public const int Q8Block = 32;

    public KvElementType Type;

    /// <summary>Contiguous storage: the first element of group 0, row 0 (null when paged).</summary>
    public byte* Data;

    /// <summary>Contiguous q8 storage: the scales, <c>[groups, rows, blocksPerRow]</c> (null otherwise).</summary>
    public Half* Scales;

    /// <summary>Paged storage: the pages' first bytes, <c>[groups, PagesPerGroup]</c> (null when contiguous).</summary>
    public byte** Pages;

    /// <summary>Paged q8 storage: each page's scales, laid out as <see cref="Pages"/>.</summary>
    public Half** ScalePages;

    /// <summary>Rows per page: a power of two of at least 16 (kernels split keys in chunks that never cross a page). 0 when contiguous.</summary>
    public int PageRows;

    public int PagesPerGroup;

    /// <summary>Rows per group (<c>nk</c>).</summary>
    public int Rows;

    /// <summary>Elements per row (<c>d</c> or <c>dv</c>).</summary>
    public int RowLength;

    public readonly bool IsPaged => Pages != null;

    /// <summary>Whether this is contiguous float32 storage, which kernels may read as plain float rows.</summary>
    public readonly bool IsContiguousFloat32 => Type == KvElementType.Float32 && Pages == null;

    public readonly int BlocksPerRow => (RowLength + Q8Block - 1) / Q8Block;

    public readonly int ElementSize => KvElementTypes.SizeOf(Type);

    /// <summary>The first byte of row <paramref name="j"/> of group <paramref name="g"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly byte* Row(long g, int j) => Pages == null
        ? Data + ((((g * Rows) + j) * RowLength) * (long)ElementSize)
        : Pages[(g * PagesPerGroup) + (j / PageRows)] + ((long)(j % PageRows) * RowLength * ElementSize);

    /// <summary>The scales of row <paramref name="j"/> of group <paramref name="g"/> (q8 only; null otherwise).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly Half* RowScales(long g, int j) => Type != KvElementType.Q8
        ? null
        : Pages == null
            ? Scales + (((g * Rows) + j) * BlocksPerRow)
            : ScalePages[(g * PagesPerGroup) + (j / PageRows)] + ((long)(j % PageRows) * BlocksPerRow);

    /// <summary>Rows from <paramref name="j"/> on that lie in one piece of memory (the rest of the page, or of the group).</summary>
    public readonly int ContiguousRows(int j) => Pages == null ? Rows - j : PageRows - (j % PageRows);

    /// <summary>Widens row <paramref name="j"/> of group <paramref name="g"/> into <paramref name="destination"/> (<see cref="RowLength"/> floats).</summary>
    public readonly void WidenRow(long g, int j, float* destination) => KvWiden.Row(Type, Row(g, j), RowScales(g, j), RowLength, destination);

    /// <summary>Contiguous float32 operand over <paramref name="data"/>.</summary>
    public static KvOperand Float32(float* data, int rows, int rowLength) => new()
    {
        Type = KvElementType.Float32,
        Data = (byte*)data,
        Rows = rows,
        RowLength = rowLength,
    };
}

/// <summary>
/// Widening of stored elements to float32, in registers of every width. Float16 is converted by integer operations
/// (.NET exposes no <c>vcvtph2ps</c>): the magnitude bits shifted into a float's exponent and mantissa and multiplied by
/// 2^112, which is exact for normal and subnormal halves alike, with infinities and NaNs restored by a compare; bfloat16 is
/// the upper half of a float (a shift); q8 is a sign-extended byte times its block's scale. All conversions are exact.
/// </summary>
internal static unsafe class KvWiden
{
    /// <summary>2^112: a half's exponent bias (15) moved to a float's (127).</summary>
    private const float HalfRebias = 5.192296858534828e33f;

    /// <summary>One element, widened.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(KvElementType type, byte* row, Half* scales, int t) => type switch
    {
        KvElementType.Float32 => ((float*)row)[t],
        KvElementType.Float16 => (float)((Half*)row)[t],
        KvElementType.BFloat16 => BitConverter.Int32BitsToSingle(((ushort*)row)[t] << 16),
        _ => ((sbyte*)row)[t] * (float)scales[t / KvOperand.Q8Block],
    };

    /// <summary>A whole row of <paramref name="length"/> elements into floats (packing and references).</summary>
    public static void Row(KvElementType type, byte* row, Half* scales, int length, float* destination)
    {
        int t = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; t + 16 <= length; t += 16)
            {
                Load512(type, row, scales, t).Store(destination + t);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; t + 8 <= length; t += 8)
            {
                Load256(type, row, scales, t).Store(destination + t);
            }
        }

        for (; t < length; t++)
        {
            destination[t] = Scalar(type, row, scales, t);
        }
    }

    /// <summary>Elements t .. t + 16 widened (t a multiple of 16, so one q8 scale covers them all).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(KvElementType type, byte* row, Half* scales, int t)
    {
        switch (type)
        {
            case KvElementType.Float32:
                return Vector512.Load((float*)row + t);
            case KvElementType.Float16:
                return Half512(Vector256.Load((ushort*)row + t));
            case KvElementType.BFloat16:
                return Vector512.ShiftLeft(Widen(Vector256.Load((ushort*)row + t)), 16).AsSingle();
            default:
                Vector128<sbyte> sixteen = Vector128.Load((sbyte*)row + t);
                Vector512<int> bytes = Avx512F.IsSupported
                    ? Avx512F.ConvertToVector512Int32(sixteen)
                    : Vector512.Create(Bytes8(Vector128.WidenLower(sixteen)), Bytes8(Vector128.WidenUpper(sixteen)));
                return Vector512.ConvertToSingle(bytes) * Vector512.Create((float)scales[t / KvOperand.Q8Block]);
        }
    }

    /// <summary>Elements t .. t + 8 widened (t a multiple of 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(KvElementType type, byte* row, Half* scales, int t)
    {
        switch (type)
        {
            case KvElementType.Float32:
                return Vector256.Load((float*)row + t);
            case KvElementType.Float16:
                return Half256(Vector128.Load((ushort*)row + t));
            case KvElementType.BFloat16:
                return Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)row + t).ToVector256Unsafe()), 16).AsSingle();
            default:
                // Eight bytes only: a 16-byte load could read past the end of the last row.
                Vector128<sbyte> eight = Vector128.CreateScalarUnsafe(*(long*)((sbyte*)row + t)).AsSByte();
                Vector256<int> bytes = Avx2.IsSupported ? Avx2.ConvertToVector256Int32(eight) : Bytes8(Vector128.WidenLower(eight));
                return Vector256.ConvertToSingle(bytes) * Vector256.Create((float)scales[t / KvOperand.Q8Block]);
        }
    }

    /// <summary>Widened element loads as the generic kernels need them: 16, 8 or 1 floats per register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Load<TV>(KvElementType type, byte* row, Half* scales, int t)
        where TV : struct
    {
        if (typeof(TV) == typeof(Vector512<float>))
        {
            Vector512<float> v = Load512(type, row, scales, t);
            return Unsafe.As<Vector512<float>, TV>(ref v);
        }

        if (typeof(TV) == typeof(Vector256<float>))
        {
            Vector256<float> v = Load256(type, row, scales, t);
            return Unsafe.As<Vector256<float>, TV>(ref v);
        }

        float s = Scalar(type, row, scales, t);
        return Unsafe.As<float, TV>(ref s);
    }

    /// <summary>Eight 16-bit integers sign-extended to 32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Bytes8(Vector128<short> x) => Vector256.Create(Vector128.WidenLower(x), Vector128.WidenUpper(x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Widen(Vector256<ushort> bits) =>
        Avx512F.IsSupported ? Avx512F.ConvertToVector512UInt32(bits) : Vector512.Create(Vector256.WidenLower(bits), Vector256.WidenUpper(bits));

    /// <summary>Sixteen halves to floats, exactly (see the class remarks): seven AVX-512 operations where the CPU has them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Half512(Vector256<ushort> bits) => Avx512F.IsSupported ? Half512Avx512(bits.AsInt16()) : Half512Portable(bits);

    /// <summary>
    /// Sixteen halves to floats, exactly, in seven AVX-512 operations instead of ten (the float16 decoding kernel is bound by
    /// them): the halves sign-extended and shifted left 13 put the magnitude bits under a float's exponent and mantissa and a
    /// copy of the sign at bit 31; the magnitude times 2^112 is the value for normal and subnormal halves alike; one ternary
    /// logic operation puts the sign back, another sets every exponent bit of infinities and NaNs (magnitude at least 0x7c00).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Half512Avx512(Vector256<short> bits)
    {
        Vector512<uint> shifted = Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(bits), 13).AsUInt32();
        Vector512<uint> magnitude = shifted & Vector512.Create(0x0fffe000u);
        Vector512<uint> finite = (magnitude.AsSingle() * Vector512.Create(HalfRebias)).AsUInt32();

        // 0xf8: a | (b & c).
        Vector512<uint> signed = Avx512F.TernaryLogic(finite, shifted, Vector512.Create(0x80000000u), 0xf8);
        Vector512<uint> special = Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x0f800000u));
        return Vector512.ConditionalSelect(special, signed | Vector512.Create(0x7f800000u), signed).AsSingle(); // a masked or
    }

    /// <summary>Sixteen halves to floats, exactly, with portable vector operations (CPUs without AVX-512F).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Half512Portable(Vector256<ushort> bits)
    {
        Vector512<uint> h = Widen(bits);
        Vector512<uint> magnitude = h & Vector512.Create(0x7fffu);
        Vector512<uint> shifted = Vector512.ShiftLeft(magnitude, 13);
        Vector512<float> finite = shifted.AsSingle() * Vector512.Create(HalfRebias);
        Vector512<uint> special = Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7c00u));
        Vector512<uint> result = Vector512.ConditionalSelect(special, shifted | Vector512.Create(0x7f800000u), finite.AsUInt32());
        return (result | Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16)).AsSingle();
    }

    /// <summary>Eight halves to floats, exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Half256(Vector128<ushort> bits)
    {
        Vector256<uint> h = Vector256.WidenLower(bits.ToVector256Unsafe());
        Vector256<uint> magnitude = h & Vector256.Create(0x7fffu);
        Vector256<uint> shifted = Vector256.ShiftLeft(magnitude, 13);
        Vector256<float> finite = shifted.AsSingle() * Vector256.Create(HalfRebias);
        Vector256<uint> special = Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7c00u));
        Vector256<uint> result = Vector256.ConditionalSelect(special, shifted | Vector256.Create(0x7f800000u), finite.AsUInt32());
        return (result | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }
}

/// <summary>
/// A storage type as a type parameter, so a kernel body generic over it is compiled once per type and the widening
/// (<see cref="KvWiden.Load{TV}"/> with <c>TE.Type</c>, a constant in each instantiation) folds to that type's instructions.
/// </summary>
internal interface IKvElement
{
    static abstract KvElementType Type { get; }
}

/// <summary>Float32 storage.</summary>
internal readonly struct KvFloat32 : IKvElement
{
    public static KvElementType Type => KvElementType.Float32;
}

/// <summary>Float16 storage.</summary>
internal readonly struct KvFloat16 : IKvElement
{
    public static KvElementType Type => KvElementType.Float16;
}

/// <summary>BFloat16 storage.</summary>
internal readonly struct KvBFloat16 : IKvElement
{
    public static KvElementType Type => KvElementType.BFloat16;
}

/// <summary>Q8 storage (8-bit values, a float16 scale per 32).</summary>
internal readonly struct KvQ8 : IKvElement
{
    public static KvElementType Type => KvElementType.Q8;
}
