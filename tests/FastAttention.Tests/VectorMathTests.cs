using System.Runtime.Intrinsics;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class VectorMathTests
{
    [Fact]
    public void Base_2_softmax_exp_is_within_2e7_relative_wherever_its_result_is_a_normal_float()
    {
        // The tiled kernel's exp: 2^x on [-126, 0], the same density as above (~0.9 million points), for the 512-bit,
        // 256-bit (vscalefps here) and scalar forms, and the 256-bit form without AVX-512 on its own.
        static IEnumerable<float> Points()
        {
            for (float x = -126f; x <= 0f; x += (MathF.Abs(x) * 1e-5f) + 1e-6f)
            {
                yield return x;
            }
        }

        static Vector256<float> Portable(Vector256<float> x)
        {
            Vector256<float> clamped = Vector256.Max(Vector256.Create(VectorMath.Exp2Underflow), x);
            Vector256<float> n = Vector256.Round(clamped), f = clamped - n;
            Vector256<float> p = VectorMath.Exp2NonPositive<Simd256, Vector256<float>>(f); // f in [-1/2, 1/2]: no scaling inside
            return Simd256.ScaleByPow2Portable(p, n);
        }

        AssertWorstRelative(
            Points(),
            VectorMath.Exp2NonPositive<Simd512, Vector512<float>>,
            VectorMath.Exp2NonPositive<Simd256, Vector256<float>>,
            VectorMath.Exp2NonPositive<SimdScalar, float>,
            Tolerance.SoftmaxExpRelative,
            minimumPoints: 500_000,
            exact: x => Math.Pow(2, x));
        AssertWorstRelative(Points(), x => x, Portable, x => x, Tolerance.SoftmaxExpRelative, minimumPoints: 500_000, exact: x => Math.Pow(2, x), only256: true);
    }

    [Fact]
    public void Base_2_softmax_exp_edge_cases()
    {
        Assert.Equal(1f, VectorMath.Exp2NonPositive<SimdScalar, float>(0f));
        Assert.Equal(0.5f, VectorMath.Exp2NonPositive<Simd512, Vector512<float>>(Vector512.Create(-1f))[7]);
        foreach (float x in new[] { float.NegativeInfinity, -150.5f, -160f, -1e30f })
        {
            Assert.Equal(0f, VectorMath.Exp2NonPositive<SimdScalar, float>(x));
            Assert.Equal(0f, VectorMath.Exp2NonPositive<Simd512, Vector512<float>>(Vector512.Create(x))[5]);
        }

        Assert.Equal(0f, Simd256.ScaleByPow2Portable(Vector256.Create(1.42f), Vector256.Create(VectorMath.Exp2Underflow))[2]);

        // Subnormal results below -126, gradual underflow as in IEEE arithmetic.
        Assert.Equal(MathF.ScaleB(1f, -140), VectorMath.Exp2NonPositive<Simd512, Vector512<float>>(Vector512.Create(-140f))[0]);
        Assert.Equal(MathF.ScaleB(1f, -140), Simd256.ScaleByPow2Portable(Vector256.Create(1f), Vector256.Create(-140f))[0]);
        Assert.True(float.IsNaN(VectorMath.Exp2NonPositive<SimdScalar, float>(float.NaN)));
        Assert.True(float.IsNaN(VectorMath.Exp2NonPositive<Simd512, Vector512<float>>(Vector512.Create(float.NaN))[3]));
        Assert.True(float.IsNaN(VectorMath.Exp2NonPositive<Simd256, Vector256<float>>(Vector256.Create(float.NaN))[3]));
    }

    /// <summary>
    /// Feeds the points 16 at a time to the 512-bit form (and the first 8 of each batch to the 256-bit
    /// form, the first to the scalar form) and checks each form's max relative error against Math.Exp.
    /// </summary>
    private static void AssertWorstRelative(
        IEnumerable<float> points,
        Func<Vector512<float>, Vector512<float>> exp512,
        Func<Vector256<float>, Vector256<float>> exp256,
        Func<float, float> expScalar,
        double tolerance,
        int minimumPoints,
        Func<double, double>? exact = null,
        bool only256 = false)
    {
        exact ??= Math.Exp;
        double worst512 = 0, worst256 = 0, worstScalar = 0;
        float[] lanes = new float[16];
        int count = 0;
        foreach (float x in points)
        {
            lanes[count++ % 16] = x;
            if (count % 16 != 0)
            {
                continue;
            }

            Vector512<float> r512 = exp512(Vector512.Create(lanes));
            Vector256<float> r256 = exp256(Vector256.Create(lanes.AsSpan(0, 8)));
            for (int l = 0; l < 16; l++)
            {
                double want = exact(lanes[l]);
                worst512 = only256 ? 0 : Math.Max(worst512, Math.Abs(r512[l] - want) / want);
                if (l < 8)
                {
                    worst256 = Math.Max(worst256, Math.Abs(r256[l] - want) / want);
                }
            }

            worstScalar = only256 ? 0 : Math.Max(worstScalar, Math.Abs(expScalar(lanes[0]) - exact(lanes[0])) / exact(lanes[0]));
        }

        Assert.True(count >= minimumPoints, $"only {count} points");
        Assert.True(worst512 <= tolerance, $"Vector512 exp max relative error {worst512:E3}");
        Assert.True(worst256 <= tolerance, $"Vector256 exp max relative error {worst256:E3}");
        Assert.True(worstScalar <= tolerance, $"scalar exp max relative error {worstScalar:E3}");
        Console.WriteLine($"max relative error: {worst512:E3} (512-bit), {worst256:E3} (256-bit), {worstScalar:E3} (scalar)");
    }
}
