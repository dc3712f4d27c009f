using System.Runtime.Intrinsics;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class VectorMathTests
{
    [Fact]
    public void Exp_relative_error_is_within_the_documented_bound_on_a_dense_grid()
    {
        double worst512 = 0, worst256 = 0, worstScalar = 0;
        float[] lanes = new float[16];
        for (double x = -87.3; x <= 88.3; x += 0.000731)
        {
            for (int l = 0; l < 16; l++)
            {
                lanes[l] = (float)(x + (l * 1e-5));
            }

            Vector512<float> r512 = VectorMath.Exp<Simd512, Vector512<float>>(Vector512.Create(lanes));
            Vector256<float> r256 = VectorMath.Exp<Simd256, Vector256<float>>(Vector256.Create(lanes.AsSpan(0, 8)));
            for (int l = 0; l < 16; l++)
            {
                double exact = Math.Exp(lanes[l]);
                worst512 = Math.Max(worst512, Math.Abs(r512[l] - exact) / exact);
                if (l < 8)
                {
                    worst256 = Math.Max(worst256, Math.Abs(r256[l] - exact) / exact);
                }
            }

            float s = VectorMath.Exp<SimdScalar, float>(lanes[0]);
            worstScalar = Math.Max(worstScalar, Math.Abs(s - Math.Exp(lanes[0])) / Math.Exp(lanes[0]));
        }

        Assert.True(worst512 <= Tolerance.ExpRelative, $"Vector512 exp max relative error {worst512:E3}");
        Assert.True(worst256 <= Tolerance.ExpRelative, $"Vector256 exp max relative error {worst256:E3}");
        Assert.True(worstScalar <= Tolerance.ExpRelative, $"scalar exp max relative error {worstScalar:E3}");
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
