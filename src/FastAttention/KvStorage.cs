using System.Buffers;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// How keys and values are stored. Queries, accumulation and outputs are always float32: the low-precision types are storage,
/// widened to float32 in registers as the kernels read them, so they cut the bytes a memory-bound call (decoding) reads.
/// </summary>
public enum KvElementType
{
    /// <summary>IEEE float32, 32 bits a value: exact.</summary>
    Float32,

    /// <summary>IEEE float16 (binary16), 16 bits a value: 11 significant bits, range +-65504.</summary>
    Float16,

    /// <summary>bfloat16 (the upper half of a float32), 16 bits a value: 8 significant bits, float32's range.</summary>
    BFloat16,

    /// <summary>
    /// Signed 8-bit values with one float16 scale per block of 32 consecutive elements of a row (llama.cpp's q8_0 layout, as
    /// two arrays): element <c>t</c> is <c>value[t] scale[t / 32]</c>, 8.5 bits a value when rows are whole blocks.
    /// </summary>
    Q8,
}

/// <summary>Names, sizes and rounding of the <see cref="KvElementType"/> values.</summary>
public static class KvElementTypes
{
    /// <summary>The short names the CLI and the kernel registry use: f32, f16, bf16, q8.</summary>
    public static IReadOnlyList<string> Names { get; } = ["f32", "f16", "bf16", "q8"];

    /// <summary>The short name of <paramref name="type"/> (f32, f16, bf16 or q8).</summary>
    /// <param name="type">The element type.</param>
    /// <returns>Its name.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The value is no <see cref="KvElementType"/>.</exception>
    public static string Name(KvElementType type) =>
        Enum.IsDefined(type) ? Names[(int)type] : throw new ArgumentOutOfRangeException(nameof(type), type, "Not a KV element type; use Float32, Float16, BFloat16 or Q8.");

    /// <summary>Parses a short name (f32, f16, bf16, q8; also float32, float16, bfloat16, q8_0), ignoring case.</summary>
    /// <param name="name">The name.</param>
    /// <param name="type">The element type, when the name is known.</param>
    /// <returns>Whether the name is known.</returns>
    public static bool TryParse(string? name, out KvElementType type)
    {
        type = (name ?? "").Trim().ToLowerInvariant() switch
        {
            "f32" or "float32" or "fp32" => KvElementType.Float32,
            "f16" or "float16" or "fp16" or "half" => KvElementType.Float16,
            "bf16" or "bfloat16" => KvElementType.BFloat16,
            "q8" or "q8_0" => KvElementType.Q8,
            _ => (KvElementType)(-1),
        };
        return (int)type >= 0;
    }

    /// <summary>Bytes per stored value, not counting q8's scales (4, 2, 2, 1).</summary>
    /// <param name="type">The element type.</param>
    /// <returns>The size in bytes.</returns>
    public static int SizeOf(KvElementType type) => type switch
    {
        KvElementType.Float32 => 4,
        KvElementType.Float16 or KvElementType.BFloat16 => 2,
        _ => 1,
    };

    /// <summary>Bytes a row of <paramref name="rowLength"/> elements takes, q8's scales included.</summary>
    /// <param name="type">The element type.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <returns>The size in bytes.</returns>
    public static long RowBytes(KvElementType type, int rowLength) =>
        ((long)rowLength * SizeOf(type)) + (type == KvElementType.Q8 ? 2L * ((rowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block) : 0);

    /// <summary>
    /// The largest rounding error of an element stored as <paramref name="stored"/> (round to nearest from the original):
    /// 0 for float32, <c>max(2^-11 |x|, 2^-25)</c> for float16, <c>max(2^-8 |x|, 2^-134)</c> for bfloat16; for q8 it is half
    /// the block's scale, which <see cref="KvTensor"/> supplies per block.
    /// </summary>
    internal static double ElementError(KvElementType type, float stored) => type switch
    {
        KvElementType.Float16 => Math.Max(Math.Abs(stored) * (1.0 / 2048), Math.ScaleB(1.0, -25)),
        KvElementType.BFloat16 => Math.Max(Math.Abs(stored) * (1.0 / 256), Math.ScaleB(1.0, -134)),
        _ => 0,
    };
}

/// <summary>
/// A key or value tensor in a <see cref="KvElementType"/>: dense C-order <c>[batch, kvHeads, n, rowLength]</c> (the kernels'
/// layout), held without widening. Wraps the caller's memory (<c>From...</c>) or owns an encoded copy (<see cref="Encode"/>).
/// Wrapped memory must not change while the tensor is in use: the tensor keeps what it learns of its values (the rounding
/// errors behind <see cref="KvErrorBound"/>) across calls. Wrap changed memory in a new tensor.
/// </summary>
public sealed class KvTensor
{
    private readonly ReadOnlyMemory<float> _float32;
    private readonly ReadOnlyMemory<Half> _float16;
    private readonly ReadOnlyMemory<ushort> _bfloat16;
    private readonly ReadOnlyMemory<sbyte> _q8;
    private readonly ReadOnlyMemory<Half> _scales;

    /// <summary>The error profile of the last grouping asked for (see <see cref="ErrorProfile"/>).</summary>
    private Profile? _profile;

    private KvTensor(KvElementType type, int length, int rowLength, ReadOnlyMemory<float> float32 = default, ReadOnlyMemory<Half> float16 = default,
        ReadOnlyMemory<ushort> bfloat16 = default, ReadOnlyMemory<sbyte> q8 = default, ReadOnlyMemory<Half> scales = default)
    {
        ElementType = type;
        Length = length;
        RowLength = rowLength;
        _float32 = float32;
        _float16 = float16;
        _bfloat16 = bfloat16;
        _q8 = q8;
        _scales = scales;
    }

    /// <summary>The storage type.</summary>
    public KvElementType ElementType { get; }

    /// <summary>Elements (rows times <see cref="RowLength"/>).</summary>
    public int Length { get; }

    /// <summary>Elements per row: the head dimension d (keys) or dv (values).</summary>
    public int RowLength { get; }

    /// <summary>Rows (<c>batch kvHeads n</c>).</summary>
    public int RowCount => Length / RowLength;

    /// <summary>Bytes held, q8's scales included.</summary>
    public long ByteCount => RowCount * KvElementTypes.RowBytes(ElementType, RowLength);

    /// <summary>Bits per value, q8's scales included (32, 16, 16, 8.5 for rows of whole blocks).</summary>
    public double BitsPerValue => Length == 0 ? 8.0 * KvElementTypes.SizeOf(ElementType) : 8.0 * ByteCount / Length;

    /// <summary>The raw q8 values (empty for other types).</summary>
    public ReadOnlyMemory<sbyte> Q8Values => _q8;

    /// <summary>The q8 scales, <c>ceil(RowLength / 32)</c> per row (empty for other types).</summary>
    public ReadOnlyMemory<Half> Q8Scales => _scales;

    /// <summary>Wraps float32 values (no copy).</summary>
    /// <param name="values">The values, a whole number of rows.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <returns>The tensor.</returns>
    /// <exception cref="ArgumentException">The row length is not positive or does not divide the length.</exception>
    public static KvTensor FromFloat32(ReadOnlyMemory<float> values, int rowLength) =>
        new(KvElementType.Float32, CheckRows(values.Length, rowLength, nameof(values)), rowLength, float32: values);

    /// <summary>Wraps float16 values (no copy).</summary>
    /// <param name="values">The values, a whole number of rows.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <returns>The tensor.</returns>
    /// <exception cref="ArgumentException">The row length is not positive or does not divide the length.</exception>
    public static KvTensor FromFloat16(ReadOnlyMemory<Half> values, int rowLength) =>
        new(KvElementType.Float16, CheckRows(values.Length, rowLength, nameof(values)), rowLength, float16: values);

    /// <summary>Wraps bfloat16 values given as their 16 bits (the upper half of the float32 they round; no copy).</summary>
    /// <param name="bits">The values' bits, a whole number of rows.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <returns>The tensor.</returns>
    /// <exception cref="ArgumentException">The row length is not positive or does not divide the length.</exception>
    public static KvTensor FromBFloat16(ReadOnlyMemory<ushort> bits, int rowLength) =>
        new(KvElementType.BFloat16, CheckRows(bits.Length, rowLength, nameof(bits)), rowLength, bfloat16: bits);

    /// <summary>Wraps q8 values and their scales (no copy): element t of a row is <c>values[t] scales[t / 32]</c>.</summary>
    /// <param name="values">The 8-bit values, a whole number of rows.</param>
    /// <param name="scales">One scale per block of 32 elements of each row: <c>rows ceil(rowLength / 32)</c>.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <returns>The tensor.</returns>
    /// <exception cref="ArgumentException">The row length does not divide the length, or there are not as many scales as blocks.</exception>
    public static KvTensor FromQ8(ReadOnlyMemory<sbyte> values, ReadOnlyMemory<Half> scales, int rowLength)
    {
        int length = CheckRows(values.Length, rowLength, nameof(values));
        long blocks = (long)(length / rowLength) * ((rowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block);
        Validate.Length(scales.Length, blocks, nameof(scales), "[rows, ceil(rowLength / 32)]", $"{length / rowLength} rows of {rowLength}");
        return new(KvElementType.Q8, length, rowLength, q8: values, scales: scales);
    }

    /// <summary>
    /// Rounds float32 values into <paramref name="type"/>, to nearest (ties to even). q8 takes each block's scale as its largest
    /// magnitude over 127, rounded up to a float16 so no value clips, and each value as the nearest integer multiple of it.
    /// </summary>
    /// <param name="values">The values, a whole number of rows.</param>
    /// <param name="rowLength">Elements per row.</param>
    /// <param name="type">The storage type.</param>
    /// <returns>A tensor that owns its storage.</returns>
    /// <exception cref="ArgumentException">The row length does not divide the length; or a value is NaN or infinite (q8), or
    /// lies past the type's range (float16 past +-65504, q8 past +-65504 x 127): the message names its index.</exception>
    public static KvTensor Encode(ReadOnlySpan<float> values, int rowLength, KvElementType type)
    {
        int length = CheckRows(values.Length, rowLength, nameof(values));
        switch (type)
        {
            case KvElementType.Float32:
                return new(type, length, rowLength, float32: values.ToArray());
            case KvElementType.Float16:
            {
                var half = new Half[length];
                for (int x = 0; x < length; x++)
                {
                    half[x] = (Half)values[x];
                    if (Half.IsInfinity(half[x]) && float.IsFinite(values[x]))
                    {
                        throw OutOfRange(values, rowLength, x, "float16 holds at most 65504 in magnitude; store these keys or values as bf16 or f32");
                    }
                }

                return new(type, length, rowLength, float16: half);
            }

            case KvElementType.BFloat16:
            {
                var bits = new ushort[length];
                for (int x = 0; x < length; x++)
                {
                    bits[x] = ToBFloat16(values[x]);
                    if ((bits[x] & 0x7fff) == 0x7f80 && float.IsFinite(values[x]))
                    {
                        throw OutOfRange(values, rowLength, x, "a finite value this close to float32's largest rounds to infinity in bfloat16; store these keys or values as f32");
                    }
                }

                return new(type, length, rowLength, bfloat16: bits);
            }

            case KvElementType.Q8:
            {
                int rows = length / rowLength, blocksPerRow = (rowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block;
                var q = new sbyte[length];
                var scales = new Half[rows * blocksPerRow];
                for (int r = 0; r < rows; r++)
                {
                    for (int blk = 0; blk < blocksPerRow; blk++)
                    {
                        int t0 = blk * KvOperand.Q8Block, t1 = Math.Min(rowLength, t0 + KvOperand.Q8Block);
                        ReadOnlySpan<float> block = values.Slice((r * rowLength) + t0, t1 - t0);
                        float max = 0f;
                        for (int t = 0; t < block.Length; t++)
                        {
                            if (!float.IsFinite(block[t]))
                            {
                                throw OutOfRange(values, rowLength, (r * rowLength) + t0 + t, "q8 holds finite values only");
                            }

                            max = Math.Max(max, Math.Abs(block[t]));
                        }

                        Half scale = Q8Scale(max);
                        if (Half.IsInfinity(scale))
                        {
                            int at = (r * rowLength) + t0 + System.Numerics.Tensors.TensorPrimitives.IndexOfMaxMagnitude(block);
                            throw OutOfRange(values, rowLength, at, "q8's float16 block scales hold magnitudes up to 65504 x 127; store these as bf16 or f32");
                        }

                        scales[(r * blocksPerRow) + blk] = scale;
                        float s = (float)scale;
                        for (int t = 0; t < block.Length; t++)
                        {
                            q[(r * rowLength) + t0 + t] = s == 0f ? (sbyte)0 : (sbyte)Math.Clamp(MathF.Round(block[t] / s, MidpointRounding.ToEven), -127f, 127f);
                        }
                    }
                }

                return new(type, length, rowLength, q8: q, scales: scales);
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown KV element type; use Float32, Float16, BFloat16 or Q8.");
        }
    }

    /// <summary>Widens every element to float32 (exactly) into <paramref name="destination"/>.</summary>
    /// <param name="destination">Length floats.</param>
    /// <exception cref="ArgumentException">The destination's length is not <see cref="Length"/>.</exception>
    public unsafe void Decode(Span<float> destination)
    {
        Validate.Length(destination.Length, Length, nameof(destination), "[rows, rowLength]", this);
        using Pinned pinned = Pin();
        fixed (float* o = destination)
        {
            for (int r = 0; r < RowCount; r++)
            {
                pinned.Operand.WidenRow(0, r, o + ((long)r * RowLength));
            }
        }
    }

    /// <summary>Every element widened to float32, as a new array.</summary>
    /// <returns>The values.</returns>
    public float[] ToFloat32()
    {
        var values = new float[Length];
        Decode(values);
        return values;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{KvElementTypes.Name(ElementType)} tensor of {RowCount} rows of {RowLength}";

    /// <summary>The memory pinned for a kernel, as one contiguous operand of <paramref name="rowsPerGroup"/> rows a group.</summary>
    internal unsafe Pinned Pin(int rowsPerGroup = 0)
    {
        MemoryHandle data = ElementType switch
        {
            KvElementType.Float32 => _float32.Pin(),
            KvElementType.Float16 => _float16.Pin(),
            KvElementType.BFloat16 => _bfloat16.Pin(),
            _ => _q8.Pin(),
        };
        MemoryHandle scales = ElementType == KvElementType.Q8 ? _scales.Pin() : default;
        var operand = new KvOperand
        {
            Type = ElementType,
            Data = (byte*)data.Pointer,
            Scales = (Half*)scales.Pointer,
            Rows = rowsPerGroup > 0 ? rowsPerGroup : RowCount,
            RowLength = RowLength,
        };
        return new Pinned(data, scales, operand);
    }

    /// <summary>
    /// Per group of <paramref name="rowsPerGroup"/> rows, the largest rounding error of each column (<c>[groups, RowLength]</c>,
    /// see <see cref="KvElementTypes.ElementError"/>; q8: half the largest scale of the column's block), and the largest magnitude
    /// stored. Computed on first use for a grouping and kept (one pass over the stored values, vectorised): the tensor's memory is
    /// taken as unchanging while the tensor is in use, as the type's remarks say.
    /// </summary>
    internal (double[] ColumnErrors, double MaxAbs) ErrorProfile(int rowsPerGroup)
    {
        Profile? kept = _profile;
        if (kept is not null && kept.RowsPerGroup == rowsPerGroup)
        {
            return (kept.ColumnErrors, kept.MaxAbs);
        }

        kept = ComputeProfile(rowsPerGroup);
        _profile = kept;
        return (kept.ColumnErrors, kept.MaxAbs);
    }

    private unsafe Profile ComputeProfile(int rowsPerGroup)
    {
        int groups = rowsPerGroup == 0 ? 0 : RowCount / rowsPerGroup;
        int blocksPerRow = (RowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block;
        var errors = new double[(long)groups * RowLength];
        var columnMax = new float[RowLength];
        var row = new float[RowLength];
        var scaleMax = new float[blocksPerRow];
        float maxAbs = 0f;
        using Pinned pinned = Pin();
        fixed (float* r = row)
        {
            for (int g = 0; g < groups; g++)
            {
                Array.Clear(columnMax);
                Array.Clear(scaleMax);
                for (int j = 0; j < rowsPerGroup; j++)
                {
                    int at = (g * rowsPerGroup) + j;
                    pinned.Operand.WidenRow(0, at, r);
                    System.Numerics.Tensors.TensorPrimitives.Abs(row, row);
                    System.Numerics.Tensors.TensorPrimitives.Max(columnMax, row, columnMax);
                    if (ElementType == KvElementType.Q8)
                    {
                        Half* scales = pinned.Operand.RowScales(0, at);
                        for (int b = 0; b < blocksPerRow; b++)
                        {
                            scaleMax[b] = Math.Max(scaleMax[b], (float)scales[b]);
                        }
                    }
                }

                for (int t = 0; t < RowLength; t++)
                {
                    // The error bounds grow with |x|, so the column's largest magnitude gives its largest error.
                    errors[((long)g * RowLength) + t] = ElementType == KvElementType.Q8
                        ? 0.5 * scaleMax[t / KvOperand.Q8Block]
                        : KvElementTypes.ElementError(ElementType, columnMax[t]);
                }

                maxAbs = Math.Max(maxAbs, System.Numerics.Tensors.TensorPrimitives.Max(columnMax));
            }
        }

        return new Profile(rowsPerGroup, errors, maxAbs);
    }

    /// <summary>Throws when <paramref name="destination"/> shares memory with this tensor's storage (it would be overwritten while read).</summary>
    internal void CheckApart(Span<float> destination, string name, string parameter)
    {
        Validate.NoOverlap(destination, _float32.Span, name, parameter);
        Validate.NoOverlap(destination, _float16.Span, name, parameter);
        Validate.NoOverlap(destination, _bfloat16.Span, name, parameter);
        Validate.NoOverlap(destination, _q8.Span, name, parameter);
        Validate.NoOverlap(destination, _scales.Span, name, parameter);
    }

    /// <summary>The flat index of the first NaN or infinite element (a q8 element whose scale is not finite), or -1.</summary>
    internal long FirstNonFinite()
    {
        switch (ElementType)
        {
            case KvElementType.Float32:
                return FiniteCheck.FirstNonFinite(_float32.Span);
            case KvElementType.Float16:
            {
                ReadOnlySpan<ushort> bits = System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(_float16.Span);
                for (int x = 0; x < bits.Length; x++)
                {
                    if ((bits[x] & 0x7c00) == 0x7c00)
                    {
                        return x;
                    }
                }

                return -1;
            }

            case KvElementType.BFloat16:
            {
                ReadOnlySpan<ushort> bits = _bfloat16.Span;
                for (int x = 0; x < bits.Length; x++)
                {
                    if ((bits[x] & 0x7f80) == 0x7f80)
                    {
                        return x;
                    }
                }

                return -1;
            }

            default:
            {
                ReadOnlySpan<Half> scales = _scales.Span;
                int blocksPerRow = (RowLength + KvOperand.Q8Block - 1) / KvOperand.Q8Block;
                for (int x = 0; x < scales.Length; x++)
                {
                    if (!Half.IsFinite(scales[x]))
                    {
                        return ((long)(x / blocksPerRow) * RowLength) + (x % blocksPerRow * KvOperand.Q8Block);
                    }
                }

                return -1;
            }
        }
    }

    /// <summary>float32 to bfloat16 bits, to nearest with ties to even; NaN stays NaN (quiet), infinities stay infinite.</summary>
    internal static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x40);
        }

        uint rounding = 0x7fffu + ((bits >> 16) & 1u);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>The q8 scale of a block whose largest magnitude is <paramref name="max"/>: max / 127, rounded up to a float16.</summary>
    internal static Half Q8Scale(float max)
    {
        if (max == 0f)
        {
            return Half.Zero;
        }

        Half scale = (Half)(max / 127f);
        while ((float)scale * 127f < max && !Half.IsInfinity(scale))
        {
            scale = Half.BitIncrement(scale);
        }

        return scale;
    }

    private static int CheckRows(int length, int rowLength, string name)
    {
        Validate.Positive(rowLength, "the row length", $"length {length}, row length {rowLength}", nameof(rowLength));
        if (length % rowLength != 0)
        {
            Validate.Fail(name, "the length is not a whole number of rows", $"length {length}", $"a multiple of the row length {rowLength}",
                "keys and values are [batch, kvHeads, n, rowLength] in C order");
        }

        return length;
    }

    private static ArgumentException OutOfRange(ReadOnlySpan<float> values, int rowLength, int at, string why) =>
        new($"values holds {NumberText.Format(values[at], 6)} at [{at / rowLength}, {at % rowLength}] (flat index {at}): {why}.", nameof(values));

    /// <summary>An error profile and the grouping it is for.</summary>
    private sealed record Profile(int RowsPerGroup, double[] ColumnErrors, double MaxAbs);

    /// <summary>Pinned memory and the operand over it.</summary>
    internal readonly struct Pinned(MemoryHandle data, MemoryHandle scales, KvOperand operand) : IDisposable
    {
        public KvOperand Operand { get; } = operand;

        public void Dispose()
        {
            data.Dispose();
            scales.Dispose();
        }
    }
}

/// <summary>
/// How far low-precision key and value storage can move an attention output, stated from the stored values. Let <c>e_K[t]</c>
/// be the largest rounding error of column t of the keys and <c>e_V</c> that of the values (<see cref="KvElementTypes"/>;
/// q8: half a block's scale). Every score <c>s q.k</c> then moves by at most <c>D = |s| sum_t |q_t| e_K[t]</c>, every softmax
/// weight by a factor within <c>e^(+-2D)</c>, so the weights move by at most <c>e^(2D) - 1</c> in l1 norm, and
/// <c>|out - out_exact| &lt;= (e^(2D) - 1)(M + e_V) + e_V</c> for every element, M the largest stored |V|.
/// "Exact" is attention in exact arithmetic on the values the stored ones were rounded from; the float32 kernel's own
/// rounding (that of the float32 path) comes on top.
/// </summary>
/// <param name="KeyType">The keys' storage type.</param>
/// <param name="ValueType">The values' storage type.</param>
/// <param name="ScoreError">D, the largest bound on a score's change over every query row.</param>
/// <param name="ValueError">e_V, the largest rounding error of a stored value.</param>
/// <param name="MaxAbsValue">M, the largest stored |V|.</param>
/// <param name="RelativeToMaxValue">The output bound divided by M: <c>(e^(2D) - 1)(1 + e_V / M) + e_V / M</c> (0 when M = 0 and nothing rounds).</param>
public sealed record KvErrorBound(KvElementType KeyType, KvElementType ValueType, double ScoreError, double ValueError, double MaxAbsValue, double RelativeToMaxValue)
{
    /// <summary>The bound on any output element's error, <c>(e^(2D) - 1)(M + e_V) + e_V</c> (finite even when M = 0).</summary>
    public double Absolute { get; init; }

    /// <summary>The bound for queries <c>[batch, heads, nq, d]</c> against keys whose column errors are <paramref name="keyColumnErrors"/>
    /// (<c>[batch kvHeads, d]</c>) and values whose largest error and magnitude are given.</summary>
    internal static KvErrorBound Of(ReadOnlySpan<float> query, AttentionShape shape, float scale, ReadOnlySpan<double> keyColumnErrors, double valueError, double maxAbsValue,
        KvElementType keyType, KvElementType valueType)
    {
        int d = shape.HeadDim, kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        double worst = 0;
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int h = 0; h < shape.HeadCount; h++)
            {
                ReadOnlySpan<double> errors = keyColumnErrors.Slice((((b * kvHeads) + (h / group)) * d), d);
                for (int i = 0; i < shape.QueryCount; i++)
                {
                    ReadOnlySpan<float> q = query.Slice((int)((((((long)b * shape.HeadCount) + h) * shape.QueryCount) + i) * d), d);
                    double delta = 0;
                    for (int t = 0; t < d; t++)
                    {
                        delta += Math.Abs(q[t]) * errors[t];
                    }

                    worst = Math.Max(worst, delta);
                }
            }
        }

        return FromScoreError(keyType, valueType, Math.Abs(scale) * worst, valueError, maxAbsValue);
    }

    /// <summary>The bound from its three ingredients (see the type's remarks).</summary>
    internal static KvErrorBound FromScoreError(KvElementType keyType, KvElementType valueType, double scoreError, double valueError, double maxAbsValue)
    {
        double weights = 2 * scoreError < 1e-5 ? (2 * scoreError) + (4 * scoreError * scoreError) : Math.Exp(2 * scoreError) - 1; // e^x - 1 without cancellation for tiny x (an upper bound there)
        double absolute = (weights * (maxAbsValue + valueError)) + valueError;
        double relative = maxAbsValue > 0 ? absolute / maxAbsValue : absolute > 0 ? double.PositiveInfinity : 0;
        return new(keyType, valueType, scoreError, valueError, maxAbsValue, relative) { Absolute = absolute };
    }
}
