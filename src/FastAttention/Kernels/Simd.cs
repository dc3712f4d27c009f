using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FastAttention.Kernels;

/// <summary>
/// The vector operations the kernels are written in. Each kernel body is generic over an
/// implementation (512-bit, 256-bit, scalar), so one body yields every width and the JIT
/// specialises and inlines each instantiation.
/// </summary>
/// <typeparam name="TV">The register type: <see cref="Vector512{T}"/>, <see cref="Vector256{T}"/> or <see cref="float"/>.</typeparam>
internal interface ISimd<TV>
    where TV : struct
{
    /// <summary>Floats per register.</summary>
    static abstract int Count { get; }

    /// <summary>Whether this CPU runs the width in hardware.</summary>
    static abstract bool IsSupported { get; }

    static abstract TV Broadcast(float value);

    static abstract TV Load(ref float source);

    static abstract void Store(TV value, ref float destination);

    /// <summary>Fused <c>a * b + c</c>.</summary>
    static abstract TV MultiplyAdd(TV a, TV b, TV c);

    static abstract TV Add(TV a, TV b);

    static abstract TV Subtract(TV a, TV b);

    static abstract TV Multiply(TV a, TV b);

    /// <summary>Lane-wise max; NaN handling follows the hardware instruction (not IEEE maximum).</summary>
    static abstract TV Max(TV a, TV b);

    static abstract TV Min(TV a, TV b);

    static abstract TV RoundToNearest(TV x);

    /// <summary><c>2^n</c> for lanes holding integers in [-126, 127].</summary>
    static abstract TV Pow2(TV n);

    /// <summary>The float whose bits are <paramref name="x"/>'s bits shifted left by 23: turns <c>shifter + 127 + n</c> into <c>2^n</c>.</summary>
    static abstract TV ShiftBitsLeft23(TV x);

    /// <summary><paramref name="value"/> where <paramref name="x"/> &gt;= <paramref name="threshold"/>, else <paramref name="below"/>.</summary>
    static abstract TV SelectBelow(TV x, TV threshold, TV below, TV value);

    /// <summary><paramref name="value"/>, except NaN where <paramref name="x"/> is NaN.</summary>
    static abstract TV PropagateNaN(TV x, TV value);

    static abstract float MaxAcross(TV v);

    static abstract float SumAcross(TV v);
}

/// <summary>512-bit AVX-512 registers: 16 floats.</summary>
internal readonly struct Simd512 : ISimd<Vector512<float>>
{
    public static int Count => Vector512<float>.Count;

    public static bool IsSupported => Vector512.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Broadcast(float value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(ref float source) => Vector512.LoadUnsafe(ref source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<float> value, ref float destination) => value.StoreUnsafe(ref destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Subtract(Vector512<float> a, Vector512<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Multiply(Vector512<float> a, Vector512<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.MaxNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Min(Vector512<float> a, Vector512<float> b) => Vector512.MinNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> RoundToNearest(Vector512<float> x) => Vector512.Round(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Pow2(Vector512<float> n) =>
        Vector512.ShiftLeft(Vector512.ConvertToInt32(n) + Vector512.Create(127), 23).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ShiftBitsLeft23(Vector512<float> x) => Vector512.ShiftLeft(x.AsInt32(), 23).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> SelectBelow(Vector512<float> x, Vector512<float> threshold, Vector512<float> below, Vector512<float> value) =>
        Vector512.ConditionalSelect(Vector512.LessThan(x, threshold), below, value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> PropagateNaN(Vector512<float> x, Vector512<float> value) =>
        Vector512.ConditionalSelect(Vector512.Equals(x, x), value, x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(Vector512<float> v) => Simd256.MaxAcross(Vector256.MaxNative(v.GetLower(), v.GetUpper()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumAcross(Vector512<float> v) => Vector512.Sum(v);
}

/// <summary>256-bit AVX2 registers: 8 floats.</summary>
internal readonly struct Simd256 : ISimd<Vector256<float>>
{
    public static int Count => Vector256<float>.Count;

    public static bool IsSupported => Vector256.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Broadcast(float value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(ref float source) => Vector256.LoadUnsafe(ref source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<float> value, ref float destination) => value.StoreUnsafe(ref destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Subtract(Vector256<float> a, Vector256<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Multiply(Vector256<float> a, Vector256<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.MaxNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Min(Vector256<float> a, Vector256<float> b) => Vector256.MinNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> RoundToNearest(Vector256<float> x) => Vector256.Round(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Pow2(Vector256<float> n) =>
        Vector256.ShiftLeft(Vector256.ConvertToInt32(n) + Vector256.Create(127), 23).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ShiftBitsLeft23(Vector256<float> x) => Vector256.ShiftLeft(x.AsInt32(), 23).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> SelectBelow(Vector256<float> x, Vector256<float> threshold, Vector256<float> below, Vector256<float> value) =>
        Vector256.ConditionalSelect(Vector256.LessThan(x, threshold), below, value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> PropagateNaN(Vector256<float> x, Vector256<float> value) =>
        Vector256.ConditionalSelect(Vector256.Equals(x, x), value, x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(Vector256<float> v)
    {
        Vector128<float> m = Vector128.MaxNative(v.GetLower(), v.GetUpper());
        float a = MathF.Max(m.GetElement(0), m.GetElement(1));
        float b = MathF.Max(m.GetElement(2), m.GetElement(3));
        return MathF.Max(a, b);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumAcross(Vector256<float> v) => Vector256.Sum(v);
}

/// <summary>Plain scalar floats: the fallback every CPU runs, and the widest-possible check of the generic bodies.</summary>
internal readonly struct SimdScalar : ISimd<float>
{
    public static int Count => 1;

    public static bool IsSupported => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Broadcast(float value) => value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(ref float source) => source;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float value, ref float destination) => destination = value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MultiplyAdd(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Add(float a, float b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Subtract(float a, float b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Multiply(float a, float b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Max(float a, float b) => a > b ? a : b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Min(float a, float b) => a < b ? a : b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RoundToNearest(float x) => MathF.Round(x, MidpointRounding.ToEven);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Pow2(float n) => BitConverter.Int32BitsToSingle(((int)n + 127) << 23);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ShiftBitsLeft23(float x) => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(x) << 23);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SelectBelow(float x, float threshold, float below, float value) => x < threshold ? below : value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float PropagateNaN(float x, float value) => float.IsNaN(x) ? x : value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumAcross(float v) => v;
}

/// <summary>Elementary functions written once over <see cref="ISimd{TV}"/>.</summary>
internal static class VectorMath
{
    /// <summary>Below this, <c>e^x</c> is under float's smallest normal number and is returned as 0.</summary>
    public const float ExpUnderflow = -87.33654f;

    /// <summary>Above this (ln of float's largest value), <c>e^x</c> is +inf.</summary>
    public const float ExpOverflow = 88.7228394f;

    /// <summary>
    /// <c>e^x</c> by Cody–Waite range reduction <c>x = n ln2 + r</c>, <c>|r| &lt;= ln2/2</c>, and a degree-7
    /// minimax polynomial for <c>e^r</c> (Cephes <c>expf</c>). Relative error at most about 2 ulp
    /// (measured by the tests over [-87.3, 88.3]; between 88.38 and 88.72 the result is capped at e^88.38); 0 below <see cref="ExpUnderflow"/> (so <c>exp(-inf) = 0</c>,
    /// which masking relies on); NaN in, NaN out. Softmax only evaluates it on (-inf, 0].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Exp<TS, TV>(TV x)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        TV clamped = TS.Min(TS.Max(x, TS.Broadcast(ExpUnderflow)), TS.Broadcast(88.3762626647949f));
        TV n = TS.RoundToNearest(TS.Multiply(clamped, TS.Broadcast(1.44269504088896341f)));

        TV p = ExpOfReduced<TS, TV>(clamped, n);

        TV result = TS.Multiply(p, TS.Pow2(n));
        result = TS.SelectBelow(x, TS.Broadcast(ExpUnderflow), TS.Broadcast(0f), result);
        result = TS.SelectBelow(x, TS.Broadcast(ExpOverflow), result, TS.Broadcast(float.PositiveInfinity));
        return TS.PropagateNaN(x, result);
    }

    /// <summary>
    /// <c>e^x</c> for <c>x &lt;= 0</c>, the only range softmax evaluates after subtracting the row max:
    /// the same reduction and polynomial as <see cref="Exp{TS, TV}"/> in fewer instructions; measured
    /// max relative error 1.18e-7 over [-87.3, 0] (tests hold it to 2e-7). The round-to-nearest and the float-to-int conversion are one FMA against a
    /// shifter constant <c>1.5 * 2^23 + 127</c>: afterwards the low mantissa bits hold <c>n + 127</c>,
    /// which a shift turns into the bits of <c>2^n</c>. Below <see cref="ExpUnderflow"/> (including
    /// -inf, a masked score) the result is 0; NaN propagates through the arithmetic because the clamp
    /// returns its second operand, <paramref name="x"/>, when either is NaN. Positive inputs are
    /// outside the contract.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV ExpNonPositive<TS, TV>(TV x)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        TV clamped = TS.Max(TS.Broadcast(ExpUnderflow), x);
        TV shifter = TS.Broadcast(12583039f); // 1.5 * 2^23 + 127
        TV t = TS.MultiplyAdd(clamped, TS.Broadcast(1.44269504088896341f), shifter);
        TV n = TS.Subtract(t, shifter);
        TV p = ExpOfReduced<TS, TV>(clamped, n);

        TV result = TS.Multiply(p, TS.ShiftBitsLeft23(t));
        return TS.SelectBelow(x, TS.Broadcast(ExpUnderflow), TS.Broadcast(0f), result);
    }

    /// <summary>
    /// <c>e^(x - n ln2)</c> for <c>|x - n ln2| &lt;= ln2/2</c>: Cody–Waite reduction (ln2 split in two so
    /// that <c>n ln2_hi</c> is exact) and the degree-7 Cephes polynomial shared by both exps.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TV ExpOfReduced<TS, TV>(TV x, TV n)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        TV r = TS.MultiplyAdd(n, TS.Broadcast(-0.693359375f), x);
        r = TS.MultiplyAdd(n, TS.Broadcast(2.12194440e-4f), r);
        TV p = TS.Broadcast(1.9875691500e-4f);
        p = TS.MultiplyAdd(p, r, TS.Broadcast(1.3981999507e-3f));
        p = TS.MultiplyAdd(p, r, TS.Broadcast(8.3334519073e-3f));
        p = TS.MultiplyAdd(p, r, TS.Broadcast(4.1665795894e-2f));
        p = TS.MultiplyAdd(p, r, TS.Broadcast(1.6666665459e-1f));
        p = TS.MultiplyAdd(p, r, TS.Broadcast(5.0000001201e-1f));
        p = TS.MultiplyAdd(p, TS.Multiply(r, r), TS.Add(r, TS.Broadcast(1f)));
        return p;
    }
}
