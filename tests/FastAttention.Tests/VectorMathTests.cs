using System.Runtime.Intrinsics;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class VectorMathTests
{
    [Fact]
    public void Exp_relative_error_is_within_the_documented_bound_on_a_dense_grid()
    {
        static IEnumerable<float> Points()
        {
            for (double x = -87.3; x <= 88.3; x += 0.000731)
            {
                for (int l = 0; l < 16; l++)
                {
                    yield return (float)(x + (l * 1e-5));
                }
            }
        }

        AssertWorstRelative(
            Points(),
            VectorMath.Exp<Simd512, Vector512<float>>,
            VectorMath.Exp<Simd256, Vector256<float>>,
            VectorMath.Exp<SimdScalar, float>,
            Tolerance.ExpRelative,
            minimumPoints: 0);
    }

    [Fact]
    public void Softmax_exp_is_within_2e7_relative_on_the_nonpositive_range_it_is_used_on()
    {
        // Every float in [-87.3, 0] would be 1.1e9 values; a relative stride of 1e-5 (plus 1e-6 near
        // zero) still visits every binade and every reduction interval densely (~0.7 million points).
        static IEnumerable<float> Points()
        {
            for (float x = -87.3f; x <= 0f; x += (MathF.Abs(x) * 1e-5f) + 1e-6f)
            {
                yield return x;
            }
        }

        AssertWorstRelative(
            Points(),
            VectorMath.ExpNonPositive<Simd512, Vector512<float>>,
            VectorMath.ExpNonPositive<Simd256, Vector256<float>>,
            VectorMath.ExpNonPositive<SimdScalar, float>,
            Tolerance.SoftmaxExpRelative,
            minimumPoints: 500_000);
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
        int minimumPoints)
    {
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
                double exact = Math.Exp(lanes[l]);
                worst512 = Math.Max(worst512, Math.Abs(r512[l] - exact) / exact);
                if (l < 8)
                {
                    worst256 = Math.Max(worst256, Math.Abs(r256[l] - exact) / exact);
                }
            }

            worstScalar = Math.Max(worstScalar, Math.Abs(expScalar(lanes[0]) - Math.Exp(lanes[0])) / Math.Exp(lanes[0]));
        }

        Assert.True(count >= minimumPoints, $"only {count} points");
        Assert.True(worst512 <= tolerance, $"Vector512 exp max relative error {worst512:E3}");
        Assert.True(worst256 <= tolerance, $"Vector256 exp max relative error {worst256:E3}");
        Assert.True(worstScalar <= tolerance, $"scalar exp max relative error {worstScalar:E3}");
    }

    [Fact]
    public void Softmax_exp_edge_cases()
    {
        Assert.Equal(0f, VectorMath.ExpNonPositive<SimdScalar, float>(float.NegativeInfinity));
        Assert.Equal(0f, VectorMath.ExpNonPositive<SimdScalar, float>(-88f));
        Assert.Equal(1f, VectorMath.ExpNonPositive<SimdScalar, float>(0f));
        Assert.True(float.IsNaN(VectorMath.ExpNonPositive<SimdScalar, float>(float.NaN)));
        Assert.Equal(0f, VectorMath.ExpNonPositive<Simd512, Vector512<float>>(Vector512.Create(float.NegativeInfinity))[5]);
        Assert.True(float.IsNaN(VectorMath.ExpNonPositive<Simd512, Vector512<float>>(Vector512.Create(float.NaN))[3]));
        Assert.True(float.IsNaN(VectorMath.ExpNonPositive<Simd256, Vector256<float>>(Vector256.Create(float.NaN))[3]));
    }

    [Fact]
    public void Exp_edge_cases()
    {
        Assert.Equal(0f, VectorMath.Exp<SimdScalar, float>(float.NegativeInfinity));
        Assert.Equal(0f, VectorMath.Exp<SimdScalar, float>(-100f));
        Assert.Equal(1f, VectorMath.Exp<SimdScalar, float>(0f));
        Assert.True(float.IsNaN(VectorMath.Exp<SimdScalar, float>(float.NaN)));
        Assert.True(float.IsPositiveInfinity(VectorMath.Exp<SimdScalar, float>(100f)));
        Vector512<float> v = VectorMath.Exp<Simd512, Vector512<float>>(Vector512.Create(float.NegativeInfinity));
        Assert.Equal(0f, v[0]);
        Assert.True(float.IsNaN(VectorMath.Exp<Simd512, Vector512<float>>(Vector512.Create(float.NaN))[3]));
    }
}
