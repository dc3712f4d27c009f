using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// FastAttentionFunctions.TensorAttention: its forward is the library's order-3 TensorAttention (batch folded into heads) bit
/// for bit, and the gradients of all five inputs match float64 autograd of the written-out three-tensor formula
/// (softmax over key pairs), causal and windowed included.
/// </summary>
public sealed class TensorAttentionFunctionTests
{
    public static TheoryData<string> Named => [.. Cases.Keys];

    private static readonly Dictionary<string, (int Batch, int Heads, int Nq, int Nk, int D, int Dv, bool Causal, (int, int)? Window, float? Scale)> Cases = new()
    {
        ["plain"] = (2, 2, 7, 7, 8, 8, false, null, null),
        ["nq != nk, dv != d, scale"] = (1, 2, 5, 9, 15, 8, false, null, 0.3f),
        ["causal, nq < nk"] = (1, 2, 5, 9, 8, 8, true, null, null),
        ["causal, nq > nk"] = (2, 1, 9, 5, 8, 15, true, null, null),
        ["window (2, 1)"] = (1, 2, 9, 9, 8, 8, false, (2, 1), null),
        ["window (3, 5), nq != nk, d 1"] = (2, 1, 7, 12, 1, 1, false, (3, 5), 0.5f),
        ["nq 1, nk 31, d 64"] = (1, 1, 1, 31, 64, 8, false, null, null),
        ["nk 2, causal"] = (1, 3, 2, 2, 8, 8, true, null, null),
    };

    [Theory]
    [MemberData(nameof(Named))]
    public void Matches_library_and_float64_autograd_of_the_three_tensor_formula(string name)
    {
        using var scope = TorchReference.Start();
        var (b, h, nq, nk, d, dv, causal, window, scale) = Cases[name];
        var data = Inputs(b, h, nq, nk, d, dv, 400 + name.Length);
        var weights = Data.Normal((long)b * h * nq * dv, 401 + name.Length);

        var leaves = data.Select(x => Float32Tensors.Leaf(x.Data, x.Dims)).ToArray();
        var output = FastAttentionFunctions.TensorAttention(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], causal, window, scale);
        (output * Float32Tensors.Constant(weights, [b, h, nq, dv])).sum().backward();

        // The forward is the library's, batch folded into heads, bit for bit.
        var shape = new TensorAttentionShape(b * h, nq, nk, d, dv);
        var expected = new float[shape.OutputLength];
        var options = new TensorAttentionOptions { Causal = causal, Scale = scale, Windows = window is { } w ? [w.Item1, w.Item2] : null };
        TensorAttention.Compute(data[0].Data, data[1].Data, data[2].Data, data[3].Data, data[4].Data, shape, expected, options);
        Assert.Equal(expected, Float32Tensors.Values(output));

        double s = scale ?? (1.0 / d);
        var visible = tensor(Visible(nq, nk, causal, window), [nq, nk * nk]);
        Tensor Formula(Tensor[] x)
        {
            var scores = einsum("bhid,bhjd,bhkd->bhijk", x[0], x[1], x[2]).reshape(b, h, nq, nk * nk) * s;
            var pairs = einsum("bhjv,bhkv->bhjkv", x[3], x[4]).reshape(b, h, nk * nk, dv);
            return matmul(Autograd.Softmax(scores, visible), pairs);
        }

        var reference = Autograd.Run(Formula, data, weights, ScalarType.Float64);
        var naive = Autograd.Run(Formula, data, weights, ScalarType.Float32);
        Autograd.Close(Float32Tensors.Values(output), reference.Output, naive.Output, $"output ({name})");
        string[] names = ["dQ", "dK1", "dK2", "dV1", "dV2"];
        for (int i = 0; i < 5; i++)
        {
            Autograd.Close(Float32Tensors.Values(leaves[i].grad!), reference.Gradients[i], naive.Gradients[i], $"{names[i]} ({name})");
        }
    }

    [Theory]
    [MemberData(nameof(Named))]
    public void Log_sum_exp_output_and_its_gradient_match_float64_autograd(string name)
    {
        using var scope = TorchReference.Start();
        var (b, h, nq, nk, d, dv, causal, window, scale) = Cases[name];
        var visibleRows = Visible(nq, nk, causal, window).Chunk(nk * nk).Select(row => row.Any(x => x)).ToArray();
        var data = Inputs(b, h, nq, nk, d, dv, 700 + name.Length);
        var weights = Data.Normal((long)b * h * nq * (dv + 1), 701 + name.Length);
        // A query that sees no pair has L = -inf: give its log-sum-exp no weight (its gradient is zero either way).
        for (int r = 0; r < b * h * nq; r++)
        {
            if (!visibleRows[r % nq])
            {
                weights[(r * (dv + 1)) + dv] = 0;
            }
        }

        var leaves = data.Select(x => Float32Tensors.Leaf(x.Data, x.Dims)).ToArray();
        var (output, logSumExp) = FastAttentionFunctions.TensorAttentionWithLogSumExp(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], causal, window, scale);
        Assert.Equal([(long)b, h, nq, dv], output.shape);
        Assert.Equal([(long)b, h, nq], logSumExp.shape);
        Assert.Equal(Float32Tensors.Values(FastAttentionFunctions.TensorAttention(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], causal, window, scale)), Float32Tensors.Values(output));
        var both = cat([output, where(logSumExp.isfinite(), logSumExp, zeros_like(logSumExp)).unsqueeze(-1)], -1);
        (both * Float32Tensors.Constant(weights, [b, h, nq, dv + 1])).sum().backward();

        double s = scale ?? (1.0 / d);
        var visible = tensor(Visible(nq, nk, causal, window), [nq, nk * nk]);
        Tensor Formula(Tensor[] x)
        {
            var scores = einsum("bhid,bhjd,bhkd->bhijk", x[0], x[1], x[2]).reshape(b, h, nq, nk * nk) * s;
            var pairs = einsum("bhjv,bhkv->bhjkv", x[3], x[4]).reshape(b, h, nk * nk, dv);
            var lse = scores.masked_fill(visible.logical_not(), -1e30).logsumexp(-1, keepdim: true); // finite in float32 too; a row that sees nothing has weight 0
            return cat([matmul(Autograd.Softmax(scores, visible), pairs), lse], -1);
        }

        var reference = Autograd.Run(Formula, data, weights, ScalarType.Float64);
        var naive = Autograd.Run(Formula, data, weights, ScalarType.Float32);
        var ours = Float32Tensors.Values(both);
        var lseValues = Float32Tensors.Values(logSumExp);
        for (int r = 0; r < b * h * nq; r++)
        {
            if (!visibleRows[r % nq])
            {
                Assert.Equal(float.NegativeInfinity, lseValues[r]);
                ours[(r * (dv + 1)) + dv] = (float)reference.Output[(r * (dv + 1)) + dv]; // the reference's stand-in for -inf is not ours to match
            }
        }

        Autograd.Close(ours, reference.Output, naive.Output, $"output and log-sum-exp ({name})");
        string[] names = ["dQ", "dK1", "dK2", "dV1", "dV2"];
        for (int i = 0; i < 5; i++)
        {
            Autograd.Close(Float32Tensors.Values(leaves[i].grad!), reference.Gradients[i], naive.Gradients[i], $"{names[i]} with the log-sum-exp's gradient ({name})");
        }
    }

    [Fact]
    public void Lower_rank_non_contiguous_inputs_and_the_module_give_the_same_result()
    {
        using var scope = TorchReference.Start();
        var data = Inputs(1, 2, 5, 7, 8, 8, 31);
        var four = data.Select(x => Float32Tensors.Constant(x.Data, x.Dims)).ToArray();
        var expected = Float32Tensors.Values(FastAttentionFunctions.TensorAttention(four[0], four[1], four[2], four[3], four[4], causal: true));

        var three = four.Select(t => t.squeeze(0)).ToArray();
        var lower = FastAttentionFunctions.TensorAttention(three[0], three[1], three[2], three[3], three[4], causal: true);
        Assert.Equal([2L, 5, 8], lower.shape);
        Assert.Equal(expected, Float32Tensors.Values(lower));

        var strided = four.Select(t => t.transpose(1, 2).contiguous().transpose(1, 2)).ToArray();
        Assert.False(strided[0].is_contiguous());
        Assert.Equal(expected, Float32Tensors.Values(FastAttentionFunctions.TensorAttention(strided[0], strided[1], strided[2], strided[3], strided[4], causal: true)));

        using var module = new TensorAttentionModule(causal: true);
        Assert.Equal(expected, Float32Tensors.Values(module.forward(four[0], four[1], four[2], four[3], four[4])));
        Assert.Equal("tensor(causal)", module.Describe());
        Assert.Equal("tensor(window=(2, 3))", new TensorAttentionModule(window: (2, 3)).Describe());
        Assert.Empty(module.parameters());
    }

    [Fact]
    public void Non_finite_output_gradient_gives_nan_gradients_instead_of_ending_the_process()
    {
        using var scope = TorchReference.Start();
        var data = Inputs(1, 1, 4, 5, 8, 8, 51);
        var leaves = data.Select(x => Float32Tensors.Leaf(x.Data, x.Dims)).ToArray();
        var output = FastAttentionFunctions.TensorAttention(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]);
        var weights = ones_like(output);
        weights[0, 0, 1, 2] = tensor(float.NaN);
        (output * weights).sum().backward();
        Assert.All(leaves, leaf => Assert.All(Float32Tensors.Values(leaf.grad!), x => Assert.True(float.IsNaN(x))));
    }

    [Fact]
    public void Bad_inputs_are_errors_naming_the_argument()
    {
        using var scope = TorchReference.Start();
        var x = randn(1, 2, 4, 8);
        Assert.Equal("key2", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(x, x, x.to_type(ScalarType.Float64), x, x)).ParamName);
        Assert.Equal("value2", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(x, x, x, x, randn(2, 4, 8))).ParamName);
        Assert.Equal("query", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(randn(8), x, x, x, x)).ParamName);
        Assert.Equal("scale", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(x, x, x, x, x, scale: double.NaN)).ParamName);
        // Fewer heads in a key is the core's length error (tensor attention has no grouped-query heads), as is a bad window.
        Assert.False(string.IsNullOrEmpty(Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(x, randn(1, 1, 4, 8), x, x, x)).ParamName));
        Assert.False(string.IsNullOrEmpty(Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(x, x, x, x, x, window: (0, 2))).ParamName));
        var empty = zeros(1, 2, 0, 8);
        Assert.Throws<ArgumentException>(() => FastAttentionFunctions.TensorAttention(empty, x, x, x, x));
    }

    /// <summary>Seeded q, k1, k2, v1, v2 with their <c>[b, h, n, d]</c> dims.</summary>
    private static (float[] Data, long[] Dims)[] Inputs(int b, int h, int nq, int nk, int d, int dv, int seed)
    {
        long[][] dims = [[b, h, nq, d], [b, h, nk, d], [b, h, nk, d], [b, h, nk, dv], [b, h, nk, dv]];
        return [.. dims.Select((x, i) => (Data.Normal(x.Aggregate(1L, (p, n) => p * n), seed + (10 * i)), x))];
    }

    /// <summary>Which (query, j1 j2) pairs the causal limit and windows let through (bottom-right aligned; windows imply causal).</summary>
    private static bool[] Visible(int nq, int nk, bool causal, (int First, int Second)? window)
    {
        var visible = new bool[nq * nk * nk];
        for (int i = 0; i < nq; i++)
        {
            int limit = i + nk - nq;
            for (int j1 = 0; j1 < nk; j1++)
            {
                for (int j2 = 0; j2 < nk; j2++)
                {
                    bool ok = window is { } w
                        ? j1 <= limit && j2 <= limit && j1 > limit - w.First && j2 > limit - w.Second
                        : !causal || (j1 <= limit && j2 <= limit);
                    visible[(((i * nk) + j1) * nk) + j2] = ok;
                }
            }
        }

        return visible;
    }
}
