using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public class PowerAttentionTests
{
    public static TheoryData<string, float, bool> Cases()
    {
        var data = new TheoryData<string, float, bool>();
        foreach (AttentionKernel kernel in KernelsFor.Shape(71))
        {
            foreach (float p in new[] { 0.5f, 1f, 2f, 3f, 4f })
            {
                data.Add(kernel.Name, p, p == 2f);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_float64_reference(string kernel, float power, bool causal)
    {
        var s = new AttentionShape(1, 2, 71, 263, 12, 10);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, (int)(power * 10));
        var output = new float[s.OutputLength];
        PowerAttention.Compute(q, k, v, s, output, new PowerAttentionOptions { Power = power, Causal = causal, Kernel = kernel });
        Tolerance.AssertExact(output, Reference.Attention(q, k, v, s, new Reference.Options(Causal: causal, Power: power)), $"{kernel} p={power}");
    }

    [Fact]
    public void Weights_are_the_normalised_powers_and_an_all_zero_row_outputs_zeros()
    {
        // One query, keys chosen so the dot products are 1, -2, 0: weights |x|^2 / 5 = 0.2, 0.8, 0.
        float[] q = [1f, 0f, 0f, 0f];
        float[] k = [1f, 0f, -2f, 0f, 0f, 5f];
        float[] v = [10f, 20f, 30f];
        var s = new AttentionShape(1, 1, 2, 3, 2, 1);
        var output = new float[2];
        PowerAttention.Compute(q, k, v, s, output);
        Assert.Equal((0.2 * 10) + (0.8 * 20), output[0], 1e-5);
        Assert.Equal(0f, output[1]);
    }

    [Fact]
    public void Invalid_power_is_an_error()
    {
        var s = AttentionShape.SingleHead(2, 2);
        float[] x = [1, 2, 3, 4];
        var output = new float[4];
        Assert.Throws<ArgumentOutOfRangeException>(() => PowerAttention.Compute(x, x, x, s, output, new PowerAttentionOptions { Power = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => PowerAttention.Compute(x, x, x, s, output, new PowerAttentionOptions { Power = -1 }));
    }
}
