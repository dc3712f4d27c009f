using FastAttention.Tests.Support;
using FastAttention.Leverage;

namespace FastAttention.Tests;

/// <summary>Every method rejects NaN and infinities in its inputs with the input's name and the value's [row, column].</summary>
public class NonFiniteInputTests
{
    private static readonly AttentionShape Shape = new(1, 1, 20, 30, 8, 5);

    public static TheoryData<string, float> Cases()
    {
        var data = new TheoryData<string, float>();
        foreach (string method in new[] { "exact", "poly", "sketch", "tensor", "tensor-poly", "leverage" })
        {
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            {
                data.Add(method, bad);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_method_names_the_input_and_the_position_of_the_first_non_finite_value(string method, float bad)
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(Shape, 4);
        k[(13 * 8) + 6] = bad; // key row 13, column 6
        k[(20 * 8) + 1] = float.NaN; // a later one is not the one reported
        var output = new float[Shape.OutputLength];
        var tensorShape = new TensorAttentionShape(1, 20, 30, 8, 5);
        ReadOnlyMemory<float>[] keys = [k, k.Select(x => float.IsFinite(x) ? x : 0f).ToArray()];
        ReadOnlyMemory<float>[] values = [v, v];
        Action run = method switch
        {
            "exact" => () => ExactAttention.Compute(q, k, v, Shape, output),
            "poly" => () => PolynomialAttention.Compute(q, k, v, Shape, output, new PolynomialAttentionOptions()),
            "sketch" => () => SketchedAttention.Compute(q, k, v, Shape, output, new SketchedAttentionOptions()),
            "tensor" => () => TensorAttention.Compute(q, keys, values, tensorShape, new float[20 * 5]),
            "tensor-poly" => () => TensorAttention.ComputePolynomial(q, keys, values, tensorShape, new float[20 * 5], new PolynomialAttentionOptions()),
            _ => () => LeverageScores.Compute(k, 8),
        };

        var ex = Assert.ThrowsAny<ArgumentException>(run);
        Assert.Contains($"contains {bad} at [13, 6] (flat index {(13 * 8) + 6})", ex.Message);
        Assert.Contains(method.StartsWith("tensor", StringComparison.Ordinal) ? "key 1" : "key", ex.ParamName);
        Assert.DoesNotContain("polynomial method", ex.Message); // the message is right for every method
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Finite_inputs_whose_scores_overflow_are_an_error_not_a_NaN_result(bool tensor)
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(Shape, 5);
        var output = new float[Shape.OutputLength];
        const float Huge = 3e38f; // s q.k: sums of eight products up to 3e38 each, past float's 3.4e38

        var ex = Assert.Throws<OverflowException>(() =>
        {
            if (tensor)
            {
                TensorAttention.Compute(q, [k, k], [v, v], new TensorAttentionShape(1, 20, 30, 8, 5), output, new TensorAttentionOptions { Scale = Huge });
            }
            else
            {
                ExactAttention.Compute(q, k, v, Shape, output, new ExactAttentionOptions { Scale = Huge });
            }
        });
        Assert.Contains("the output contains NaN", ex.Message);
        Assert.Contains("reduce the scale", ex.Message);

        // Large but representable scores are fine (the softmax subtracts the row max), and opting in returns the NaNs.
        ExactAttention.Compute(q, k, v, Shape, output, new ExactAttentionOptions { Scale = 1e30f });
        Assert.True(System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(output));
        ExactAttention.Compute(q, k, v, Shape, output, new ExactAttentionOptions { Scale = Huge, AllowNonFinite = true });
        Assert.Contains(output, float.IsNaN);
    }
}
