using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// FastAttentionFunctions.LevAttention: its forward is the library's LevAttention bit for bit, and its autograd gradients
/// match libtorch's float64 autograd of softmax (or power) attention restricted to the keys the library selected.
/// </summary>
public sealed class LevAttentionFunctionTests
{
    public static TheoryData<string> Named => [.. NamedCases.Keys];

    private static readonly Dictionary<string, (AttentionShape Shape, LevAttentionOptions Options)> NamedCases = new()
    {
        ["top 4 of 31"] = (new AttentionShape(2, 2, 7, 31, 8, 8), new LevAttentionOptions { Top = 4 }),
        ["top 8, keep first and last, gqa"] = (new AttentionShape(1, 4, 33, 113, 15, 8, 2), new LevAttentionOptions { Top = 8, KeepFirst = 1, KeepLast = 2 }),
        ["eps, nq 1"] = (new AttentionShape(1, 2, 1, 33, 8, 8), new LevAttentionOptions { Eps = 0.05 }),
        ["power 2, top 5"] = (new AttentionShape(2, 1, 7, 31, 8, 1), new LevAttentionOptions { Top = 5, Power = 2, Scale = 0.5f }),
        ["top 1 of 2, d 1"] = (new AttentionShape(1, 1, 7, 2, 1, 1), new LevAttentionOptions { Top = 1 }),
        ["all keys kept, d 64"] = (new AttentionShape(1, 2, 31, 7, 64, 64), new LevAttentionOptions { Top = 7 }),
    };

    [Theory]
    [MemberData(nameof(Named))]
    public void Matches_library_and_float64_autograd_on_the_kept_keys(string name)
    {
        using var scope = TorchReference.Start();
        var (s, options) = NamedCases[name];
        int seed = 100 + name.Length;
        var (q, k, v) = Data.Inputs(s, seed);
        var weights = Data.Normal(s.OutputLength, seed + 50);

        var (tq, tk, tv) = (Float32Tensors.Leaf(q, TorchReference.QueryDims(s)), Float32Tensors.Leaf(k, TorchReference.KeyDims(s)), Float32Tensors.Leaf(v, TorchReference.ValueDims(s)));
        var output = FastAttentionFunctions.LevAttention(tq, tk, tv, options.Top, options.Eps, options.Power, options.Scale, options.KeepFirst, options.KeepLast);
        (output * Float32Tensors.Constant(weights, TorchReference.OutputDims(s))).sum().backward();

        var expected = new float[s.OutputLength];
        var lse = new float[(long)s.BatchSize * s.HeadCount * s.QueryCount];
        var selections = LevAttention.Compute(q, k, v, s, expected, lse, options);
        Assert.Equal(expected, Float32Tensors.Values(output));

        // The reference: attention over each (batch, kv head)'s kept keys, as a [b, h, 1, nk] mask.
        var kept = new bool[s.BatchSize * s.HeadCount * s.KeyCount];
        int group = s.HeadCount / s.EffectiveKeyValueHeads;
        foreach (var selection in selections)
        {
            for (int h = selection.KvHead * group; h < (selection.KvHead + 1) * group; h++)
            {
                foreach (int j in selection.Keys)
                {
                    kept[(((selection.Batch * s.HeadCount) + h) * s.KeyCount) + j] = true;
                }
            }
        }

        var mask = tensor(kept, [s.BatchSize, s.HeadCount, 1, s.KeyCount]);
        var leaves = (TorchReference.Leaf(q, TorchReference.QueryDims(s)), TorchReference.Leaf(k, TorchReference.KeyDims(s)), TorchReference.Leaf(v, TorchReference.ValueDims(s)));
        double scale = options.Scale ?? (1 / Math.Sqrt(s.HeadDim));
        var forward = options.Power == 0
            ? TorchReference.Softmax(leaves.Item1, leaves.Item2, leaves.Item3, s, scale, false, mask: mask)
            : TorchReference.Power(leaves.Item1, leaves.Item2, leaves.Item3, s, options.Power, scale, false, mask);
        var reference = forward.Gradients(weights, leaves);
        var c = new TorchCase(seed, s, false, options.Scale, null, null);
        Compare.Close(Float32Tensors.Values(tq.grad!), reference.Query, "dQ " + name, c, reference.QueryMagnitude);
        Compare.Close(Float32Tensors.Values(tk.grad!), reference.Key, "dK " + name, c, reference.KeyMagnitude);
        Compare.Close(Float32Tensors.Values(tv.grad!), reference.Value, "dV " + name, c, reference.ValueMagnitude);
    }

    [Fact]
    public void Both_top_and_eps_is_the_core_s_named_error()
    {
        using var scope = TorchReference.Start();
        var x = randn(1, 1, 4, 8);
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.LevAttention(x, x, x, top: 2, eps: 0.1));
        Assert.False(string.IsNullOrEmpty(e.ParamName));
    }

    [Fact]
    public void Float64_key_is_a_named_error()
    {
        using var scope = TorchReference.Start();
        var x = randn(1, 1, 4, 8);
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.LevAttention(x, x.to_type(ScalarType.Float64), x, top: 2));
        Assert.Equal("key", e.ParamName);
    }

    [Fact]
    public void Non_finite_output_gradient_gives_nan_gradients_instead_of_ending_the_process()
    {
        using var scope = TorchReference.Start();
        var s = new AttentionShape(1, 1, 4, 9, 8, 8);
        var (q, k, v) = Data.Inputs(s, 61);
        var query = Float32Tensors.Leaf(q, TorchReference.QueryDims(s));
        var output = FastAttentionFunctions.LevAttention(query, Float32Tensors.Constant(k, TorchReference.KeyDims(s)), Float32Tensors.Constant(v, TorchReference.ValueDims(s)), top: 3);
        var weights = ones_like(output);
        weights[0, 0, 2, 1] = tensor(float.PositiveInfinity);
        (output * weights).sum().backward();
        Assert.All(Float32Tensors.Values(query.grad!), x => Assert.True(float.IsNaN(x)));
    }
}
