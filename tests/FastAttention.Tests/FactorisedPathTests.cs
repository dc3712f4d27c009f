using FastAttention.Polynomial;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// Every width of the factorised engine's products (512-bit, 256-bit, scalar; a width the CPU does not accelerate runs
/// emulated, slower but the same arithmetic) against float64 power attention, which even powers factorise exactly.
/// </summary>
public class FactorisedPathTests
{
    public static TheoryData<string, bool> Paths()
    {
        var data = new TheoryData<string, bool>();
        foreach (FactorisedKernel kernel in FactorisedKernel.All)
        {
            data.Add(kernel.Name, false);
            data.Add(kernel.Name, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Each_width_matches_float64_power_attention(string name, bool causal)
    {
        FactorisedKernel kernel = FactorisedKernel.All.Single(k => k.Name == name);
        var shape = new AttentionShape(1, 2, 131, 1030, 3, 5, KeyValueHeadCount: 1);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 17);
        var map = new MonomialFeatureMap(new MonomialFeatures(shape.HeadDim, 2, PolynomialAttention.DefaultMaxRank), [0, 0, 1], 1.0);
        float[] output = new float[shape.OutputLength];
        PolynomialAttention.RunFactorised(q, k, v, shape, output, map, map.Weights(), causal, 0, kernel);

        double[] expected = Reference.Attention(q, k, v, shape, new Reference.Options(Causal: causal, Power: 2));
        double worst = Tolerance.MaxAbsError(output, expected);
        Assert.True(worst <= 1e-5, $"{name}, causal {causal}: max error {worst:E3}");
    }

    [Fact]
    public void The_default_width_is_the_widest_the_cpu_accelerates()
    {
        Assert.True(FactorisedKernel.Default.IsSupported());
        string expected = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "factorised-v512"
            : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "factorised-v256" : "factorised-scalar";
        Assert.Equal(expected, FactorisedKernel.Default.Name);
    }
}
