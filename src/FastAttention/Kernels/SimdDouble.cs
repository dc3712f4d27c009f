using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FastAttention.Kernels;

/// <summary>
/// The double-precision counterpart of <see cref="ISimd{TV}"/>, for the kernels that accumulate in double (the
/// factorised engine): one generic body per kernel, instantiated at 512, 256 bits and scalar.
/// </summary>
/// <typeparam name="TV">The register type: <see cref="Vector512{T}"/>, <see cref="Vector256{T}"/> or <see cref="double"/>.</typeparam>
internal unsafe interface ISimdDouble<TV>
    where TV : struct
{
    /// <summary>Doubles per register.</summary>
    static abstract int Count { get; }

    /// <summary>Whether this CPU runs the width in hardware (a wider one is emulated in software, correct but slow).</summary>
    static abstract bool IsSupported { get; }

    static abstract TV Broadcast(double value);

    static abstract TV Load(double* source);

    static abstract void Store(TV value, double* destination);

    /// <summary>Fused <c>a * b + c</c>.</summary>
    static abstract TV MultiplyAdd(TV a, TV b, TV c);

    static abstract double SumAcross(TV v);
}

/// <summary>512-bit registers: 8 doubles.</summary>
internal readonly unsafe struct SimdDouble512 : ISimdDouble<Vector512<double>>
{
    public static int Count => Vector512<double>.Count;

    public static bool IsSupported => Vector512.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> Broadcast(double value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> Load(double* source) => Vector512.Load(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<double> value, double* destination) => Vector512.Store(value, destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> MultiplyAdd(Vector512<double> a, Vector512<double> b, Vector512<double> c) => Vector512.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAcross(Vector512<double> v) => Vector512.Sum(v);
}

/// <summary>256-bit registers: 4 doubles.</summary>
internal readonly unsafe struct SimdDouble256 : ISimdDouble<Vector256<double>>
{
    public static int Count => Vector256<double>.Count;

    public static bool IsSupported => Vector256.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Broadcast(double value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Load(double* source) => Vector256.Load(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<double> value, double* destination) => Vector256.Store(value, destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> MultiplyAdd(Vector256<double> a, Vector256<double> b, Vector256<double> c) => Vector256.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAcross(Vector256<double> v) => Vector256.Sum(v);
}

/// <summary>Plain scalar doubles: the fallback every CPU runs.</summary>
internal readonly unsafe struct SimdDoubleScalar : ISimdDouble<double>
{
    public static int Count => 1;

    public static bool IsSupported => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Broadcast(double value) => value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Load(double* source) => *source;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(double value, double* destination) => *destination = value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double MultiplyAdd(double a, double b, double c) => Math.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAcross(double v) => v;
}
