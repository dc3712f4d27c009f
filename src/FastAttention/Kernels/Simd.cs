using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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

    static abstract TV RoundToNearest(TV x);

    /// <summary><c>p * 2^n</c> for lanes where <paramref name="n"/> holds an integer &lt;= 127, rounded once: 0 (or a
    /// subnormal) when it underflows. AVX-512's <c>vscalefps</c> where the CPU has it.</summary>
    static abstract TV ScaleByPow2(TV p, TV n);

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
    public static Vector512<float> RoundToNearest(Vector512<float> x) => Vector512.Round(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ScaleByPow2(Vector512<float> p, Vector512<float> n) =>
        Avx512F.IsSupported ? Avx512F.Scale(p, n) : Vector512.Create(Simd256.ScaleByPow2(p.GetLower(), n.GetLower()), Simd256.ScaleByPow2(p.GetUpper(), n.GetUpper()));

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
    public static Vector256<float> RoundToNearest(Vector256<float> x) => Vector256.Round(x);

    /// <summary><c>2^n</c> for lanes holding integers in [-126, 127].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Pow2(Vector256<float> n) =>
        Vector256.ShiftLeft(Vector256.ConvertToInt32(n) + Vector256.Create(127), 23).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ScaleByPow2(Vector256<float> p, Vector256<float> n) =>
        Avx512F.VL.IsSupported ? Avx512F.VL.Scale(p, n) : ScaleByPow2Portable(p, n);

    /// <summary><see cref="ScaleByPow2"/> without AVX-512 (for n &gt;= -252): 2^n by exponent bits in two factors
    /// 2^floor(n/2) and 2^(n - floor(n/2)), each normal, so the product rounds once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ScaleByPow2Portable(Vector256<float> p, Vector256<float> n)
    {
        Vector256<float> half = Vector256.Floor(n * Vector256.Create(0.5f));
        Vector256<float> low = Vector256.Max(half, Vector256.Create(-126f)), high = Vector256.Max(n - half, Vector256.Create(-126f));
        return p * Pow2(low) * Pow2(high);
    }

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
    public static float RoundToNearest(float x) => MathF.Round(x, MidpointRounding.ToEven);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ScaleByPow2(float p, float n) => float.IsNaN(n) ? float.NaN : MathF.ScaleB(p, (int)Math.Max(n, -1000f));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumAcross(float v) => v;
}

/// <summary>Elementary functions written once over <see cref="ISimd{TV}"/>.</summary>
internal static class VectorMath
{
    /// <summary>log2 e: the softmax kernels keep scores in base 2 (<c>e^x = 2^(x log2 e)</c>).</summary>
    public const float Log2E = 1.44269504f;

    /// <summary>Below this, <c>2^x</c> rounds to 0 however the polynomial lands (<c>1.5 * 2^-160</c> is far under float's smallest subnormal).</summary>
    public const float Exp2Underflow = -160f;

    /// <summary>
    /// <c>2^x</c> for <c>x &lt;= 0</c>: the exact kernel's softmax works in base 2 (the scores carry a factor log2 e,
    /// folded into the query scale), which makes the reduction exact and short: <c>n = round(x)</c>, <c>f = x - n</c>
    /// (exact) in [-1/2, 1/2], a degree-6 minimax polynomial for <c>2^f</c> (relative error 1.9e-9 in exact
    /// arithmetic, under 1e-7 evaluated in float by Horner with FMA), and <c>2^f * 2^n</c> by one
    /// <c>vscalefps</c>. Measured max relative error: see the tests (held to 2e-7 wherever the result is a normal
    /// float, x &gt;= -126). Below -126 the result is subnormal, then 0 (so <c>2^-inf = 0</c>, which masking relies
    /// on); NaN in, NaN out (the clamp returns its second operand, <paramref name="x"/>, when either is NaN).
    /// Positive inputs are outside the contract.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Exp2NonPositive<TS, TV>(TV x)
        where TS : struct, ISimd<TV>
        where TV : struct
    {
        TV clamped = TS.Max(TS.Broadcast(Exp2Underflow), x);
        TV n = TS.RoundToNearest(clamped);
        TV f = TS.Subtract(clamped, n);
        TV p = TS.Broadcast(1.5345812e-4f);
        p = TS.MultiplyAdd(p, f, TS.Broadcast(1.3399931e-3f));
        p = TS.MultiplyAdd(p, f, TS.Broadcast(9.618489e-3f));
        p = TS.MultiplyAdd(p, f, TS.Broadcast(5.5503286e-2f));
        p = TS.MultiplyAdd(p, f, TS.Broadcast(0.24022646f));
        p = TS.MultiplyAdd(p, f, TS.Broadcast(0.6931472f));
        p = TS.MultiplyAdd(p, f, TS.Broadcast(1f));
        return TS.ScaleByPow2(p, n);
    }
}
