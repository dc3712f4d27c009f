using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// FastAttentionFunctions.ScaledDotProductAttention with PyTorch's attn_mask: bool (true = take part) and float (added to the
/// scores) masks of every broadcast shape; the forward is the library's with the mask expanded to [b, h, nq, nk], and the
/// gradients, the float mask's included (summed back to its own shape), match float64 autograd of the written-out masked softmax.
/// </summary>
public sealed class SdpaMaskTests
{
    public static TheoryData<string> Named => [.. Cases.Keys];

    private static readonly Dictionary<string, (AttentionShape Shape, long[] MaskDims, bool Float, bool Causal, bool WithNegativeInfinity)> Cases = new()
    {
        ["bool [nq, nk]"] = (new AttentionShape(2, 2, 7, 9, 8, 8), [7, 9], false, false, false),
        ["bool [b, 1, 1, nk] (padding)"] = (new AttentionShape(2, 3, 7, 9, 15, 8), [2, 1, 1, 9], false, false, false),
        ["bool [h, nq, nk], gqa, causal"] = (new AttentionShape(1, 4, 7, 7, 8, 8, 2), [4, 7, 7], false, true, false),
        ["float [nq, nk]"] = (new AttentionShape(2, 2, 7, 9, 8, 8), [7, 9], true, false, false),
        ["float [b, h, nq, nk], gqa"] = (new AttentionShape(2, 4, 5, 31, 8, 1, 2), [2, 4, 5, 31], true, false, false),
        ["float [1, h, 1, nk], causal nq > nk"] = (new AttentionShape(1, 2, 9, 5, 8, 8), [1, 2, 1, 5], true, true, false),
        ["float [nk], d 1"] = (new AttentionShape(2, 1, 33, 7, 1, 1), [7], true, false, false),
        ["float [b, 1, nq, nk] with -inf, nq 1"] = (new AttentionShape(2, 2, 1, 113, 64, 8), [2, 1, 1, 113], true, false, true),
        ["float [nq, nk] with whole rows -inf"] = (new AttentionShape(1, 2, 7, 7, 8, 8), [7, 7], true, true, true),
    };

    [Theory]
    [MemberData(nameof(Named))]
    public void Masked_case_matches_library_and_float64_autograd_with_the_mask_gradient(string name)
    {
        using var scope = TorchReference.Start();
        var (s, maskDims, isFloat, causal, withInfinity) = Cases[name];
        int seed = 300 + name.Length;
        var (q, k, v) = Data.Inputs(s, seed);
        var weights = Data.Normal(s.OutputLength, seed + 1);
        long maskLength = maskDims.Aggregate(1L, (a, b) => a * b);
        var random = new Random(seed);
        bool[] keep = [.. Enumerable.Range(0, (int)maskLength).Select(_ => random.NextDouble() < 0.7)];
        float[] bias = Data.Normal(maskLength, seed + 2);
        if (withInfinity)
        {
            // Hide some keys, and (with whole rows) every key of the first row of each [nq, nk] block.
            for (int i = 0; i < bias.Length; i++)
            {
                bias[i] = !keep[i] || (name.Contains("rows") && i % (s.QueryCount * s.KeyCount) < s.KeyCount) ? float.NegativeInfinity : bias[i];
            }
        }

        var (tq, tk, tv) = (Float32Tensors.Leaf(q, TorchReference.QueryDims(s)), Float32Tensors.Leaf(k, TorchReference.KeyDims(s)), Float32Tensors.Leaf(v, TorchReference.ValueDims(s)));
        var mask = isFloat ? Float32Tensors.Leaf(bias, maskDims) : tensor(keep, maskDims);
        var output = FastAttentionFunctions.ScaledDotProductAttention(tq, tk, tv, mask, causal);
        (output * Float32Tensors.Constant(weights, TorchReference.OutputDims(s))).sum().backward();

        // The forward is the library's with the mask expanded to [b, h, nq, nk], bit for bit.
        long[] full = [s.BatchSize, s.HeadCount, s.QueryCount, s.KeyCount];
        var expanded = mask.detach().reshape([.. Enumerable.Repeat(1L, 4 - maskDims.Length), .. maskDims]).expand(full).contiguous();
        var options = isFloat
            ? new ExactAttentionOptions { Causal = causal, Bias = expanded.data<float>().ToArray() }
            : new ExactAttentionOptions { Causal = causal, Mask = expanded.data<bool>().ToArray() };
        var expected = new float[s.OutputLength];
        ExactAttention.Compute(q, k, v, s, expected, options);
        Assert.Equal(expected, Float32Tensors.Values(output));

        // Gradients against float64 autograd of the written-out masked softmax (and the naive float32 one).
        double scale = 1 / Math.Sqrt(s.HeadDim);
        Tensor Formula(Tensor[] x)
        {
            var scores = matmul(x[0], TorchReference.Heads(x[1], s).transpose(-2, -1)) * scale;
            var visible = ones(s.QueryCount, s.KeyCount, dtype: @bool);
            if (isFloat)
            {
                scores = scores + x[3];
            }
            else
            {
                visible = visible.logical_and(mask);
            }

            if (causal)
            {
                visible = visible.logical_and(ones(s.QueryCount, s.KeyCount, dtype: @bool).tril(s.KeyCount - s.QueryCount));
            }

            return matmul(Autograd.Softmax(scores, visible), TorchReference.Heads(x[2], s));
        }

        (float[], long[])[] inputs = [(q, TorchReference.QueryDims(s)), (k, TorchReference.KeyDims(s)), (v, TorchReference.ValueDims(s)), .. isFloat ? [(bias, maskDims)] : Array.Empty<(float[], long[])>()];
        var reference = Autograd.Run(Formula, inputs, weights, ScalarType.Float64);
        var naive = Autograd.Run(Formula, inputs, weights, ScalarType.Float32);
        Tensor[] ours = [tq, tk, tv, .. isFloat ? [mask] : Array.Empty<Tensor>()];
        string[] names = ["dQ", "dK", "dV", "dMask"];
        for (int i = 0; i < ours.Length; i++)
        {
            Assert.Equal(inputs[i].Item2, ours[i].grad!.shape);
            Autograd.Close(Float32Tensors.Values(ours[i].grad!), reference.Gradients[i], naive.Gradients[i], $"{names[i]} ({name})");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Mask_means_what_it_means_to_libtorch_sdpa(bool isFloat)
    {
        // Where the conventions meet (no causal limit, no row without a key), ours equals libtorch's own SDPA with attn_mask.
        using var scope = TorchReference.Start();
        var s = new AttentionShape(2, 2, 7, 9, 8, 8);
        var (q, k, v) = Data.Inputs(s, 71);
        var keep = tensor(Enumerable.Range(0, 63).Select(i => i % 9 != (i / 9) % 4).ToArray(), [7, 9]);
        var mask = isFloat ? Float32Tensors.Constant(Data.Normal(63, 72), [7, 9]) : keep;
        var ours = FastAttentionFunctions.ScaledDotProductAttention(Float32Tensors.Constant(q, TorchReference.QueryDims(s)),
            Float32Tensors.Constant(k, TorchReference.KeyDims(s)), Float32Tensors.Constant(v, TorchReference.ValueDims(s)), mask);
        var torch = nn.functional.scaled_dot_product_attention(TorchReference.Constant(q, TorchReference.QueryDims(s)), TorchReference.Constant(k, TorchReference.KeyDims(s)),
            TorchReference.Constant(v, TorchReference.ValueDims(s)), isFloat ? mask.to_type(ScalarType.Float64) : mask);
        // The reference itself as the "naive" result: the exact kernels' tolerance alone decides.
        Autograd.Close(Float32Tensors.Values(ours), Autograd.Values(torch), Autograd.Values(torch), "output");
    }

    [Fact]
    public void A_mask_that_does_not_fit_is_an_error_naming_the_mask()
    {
        using var scope = TorchReference.Start();
        var x = randn(2, 2, 4, 8);
        string[] messages =
        [
            Throws(zeros(4, 4, dtype: int32), "bool"),
            Throws(ones(3, 4, dtype: @bool), "broadcast"),
            Throws(zeros([1L, 1, 1, 4, 4]), "rank"),
            Throws(full(4, 4, float.NaN), "NaN"),
            Throws(zeros(4, 4, dtype: float64), "float32"),
            Throws(tensor(true), "causal: true"),
        ];
        Assert.All(messages, m => Assert.False(string.IsNullOrEmpty(m)));

        string Throws(Tensor mask, string words)
        {
            var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(x, x, x, mask));
            Assert.Equal("mask", e.ParamName);
            Assert.Contains(words, e.Message, StringComparison.Ordinal);
            return e.Message;
        }
    }

    [Fact]
    public void A_mask_that_needs_no_gradient_gives_none_and_the_same_input_gradients()
    {
        using var scope = TorchReference.Start();
        var s = new AttentionShape(1, 2, 5, 7, 8, 8);
        var (q, k, v) = Data.Inputs(s, 81);
        var bias = Data.Normal(35, 82);
        float[] QueryGradient(bool maskGrad)
        {
            var query = Float32Tensors.Leaf(q, TorchReference.QueryDims(s));
            var mask = maskGrad ? Float32Tensors.Leaf(bias, [5, 7]) : Float32Tensors.Constant(bias, [5, 7]);
            FastAttentionFunctions.ScaledDotProductAttention(query, Float32Tensors.Constant(k, TorchReference.KeyDims(s)), Float32Tensors.Constant(v, TorchReference.ValueDims(s)), mask)
                .sum().backward();
            Assert.Equal(maskGrad, mask.grad is not null);
            return Float32Tensors.Values(query.grad!);
        }

        Assert.Equal(QueryGradient(true), QueryGradient(false));
    }
}
