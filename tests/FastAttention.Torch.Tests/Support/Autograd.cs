using FastAttention.Tests.Support;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests.Support;

/// <summary>
/// A written-out attention formula differentiated by libtorch's autograd, in float64 (the reference) and in float32 (the naive
/// float32 implementation whose error bounds ours), on the same seeded inputs and the same output weights W of <c>sum(O * W)</c>.
/// </summary>
internal static class Autograd
{
    /// <summary>The formula's output and the gradients of <c>sum(O * W)</c> with respect to every input, evaluated in <paramref name="dtype"/>.</summary>
    public static (double[] Output, double[][] Gradients) Run(Func<Tensor[], Tensor> formula, (float[] Data, long[] Dims)[] inputs, float[] weights, ScalarType dtype)
    {
        var leaves = inputs.Select(i => tensor(i.Data, i.Dims, dtype: float32).to_type(dtype).detach().requires_grad_(true)).ToArray();
        var output = formula(leaves);
        (output * tensor(weights, output.shape, dtype: float32).to_type(dtype)).sum().backward();
        return (Values(output), [.. leaves.Select(l => Values(l.grad!))]);
    }

    /// <summary>
    /// Ours within the exact tolerance of the float64 reference, or no worse than twice the naive float32 formula's largest
    /// error on the same tensor (where the reference's terms cancel, the result's own size says nothing about float32's error).
    /// </summary>
    public static void Close(float[] ours, double[] reference, double[] naive, string what)
    {
        Assert.Equal(reference.Length, ours.Length);
        double naiveError = 0;
        for (int i = 0; i < naive.Length; i++)
        {
            naiveError = Math.Max(naiveError, Math.Abs(naive[i] - reference[i]));
        }

        for (int i = 0; i < ours.Length; i++)
        {
            double limit = Math.Max(Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(reference[i])), Tolerance.NaiveFactor * naiveError);
            if (!(Math.Abs(ours[i] - reference[i]) <= limit))
            {
                Assert.Fail($"{what}: element {i} is {ours[i]}, float64 autograd {reference[i]}, |diff| {Math.Abs(ours[i] - reference[i]):E3} > {limit:E3} (naive float32 error {naiveError:E3})");
            }
        }
    }

    /// <summary>Row-normalised weights over the last axis for visible entries (0 elsewhere); a row that sees nothing is all zeros, as in our kernels.</summary>
    public static Tensor Softmax(Tensor scores, Tensor visible)
    {
        scores = scores.masked_fill(visible.logical_not(), double.NegativeInfinity);
        var max = scores.amax([-1], keepdim: true).detach();
        max = where(max.isfinite(), max, zeros_like(max));
        var e = (scores - max).exp();
        var z = e.sum(-1, keepdim: true);
        return e / where(z > 0, z, ones_like(z));
    }

    /// <summary>The float elements of a tensor (any dtype) as doubles.</summary>
    public static double[] Values(Tensor t) => t.detach().to_type(ScalarType.Float64).contiguous().data<double>().ToArray();
}
