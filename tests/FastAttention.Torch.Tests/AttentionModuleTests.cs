using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// MultiheadSelfAttention over our attention modules: the gradient of every parameter (and of the input) matches an
/// all-TorchSharp float64 re-implementation (the same weights over TorchSdpaModule), and swapping its attention changes the
/// output but not the parameters.
/// </summary>
public sealed class AttentionModuleTests
{
    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    public void Multihead_self_attention_parameter_gradients_match_a_float64_torch_sdpa_model(bool causal, int batch)
    {
        using var scope = TorchReference.Start();
        const int n = 7, dim = 16, heads = 4;
        manual_seed(7);
        using var ours = new MultiheadSelfAttention(dim, heads, new SoftmaxAttentionModule(causal));
        var input = Data.Normal((long)batch * n * dim, 8);
        var weights = Data.Normal((long)batch * n * dim, 9);

        // The same weights over libtorch's SDPA (top-left is_causal equals our bottom-right mask for nq = nk), in float64 and float32.
        (double[] Output, Dictionary<string, double[]> Gradients) Run(MultiheadSelfAttention model, ScalarType dtype)
        {
            var x = tensor(input, [batch, n, dim], dtype: float32).to_type(dtype).requires_grad_(true);
            var output = model.forward(x);
            (output * tensor(weights, [batch, n, dim], dtype: float32).to_type(dtype)).sum().backward();
            var gradients = model.named_parameters().ToDictionary(p => p.name, p => Autograd.Values(p.parameter.grad!));
            gradients["input"] = Autograd.Values(x.grad!);
            return (Autograd.Values(output), gradients);
        }

        MultiheadSelfAttention Copy(ScalarType dtype)
        {
            var model = new MultiheadSelfAttention(dim, heads, new TorchSdpaModule(causal));
            model.load_state_dict(ours.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone()));
            model.to(dtype);
            return model;
        }

        var mine = Run(ours, ScalarType.Float32);
        using var model64 = Copy(ScalarType.Float64);
        using var model32 = Copy(ScalarType.Float32);
        var reference = Run(model64, ScalarType.Float64);
        var naive = Run(model32, ScalarType.Float32);
        Autograd.Close(Array.ConvertAll(mine.Output, x => (float)x), reference.Output, naive.Output, "output");
        Assert.Equal(["qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "input"], mine.Gradients.Keys);
        foreach (var (name, gradient) in mine.Gradients)
        {
            Autograd.Close(Array.ConvertAll(gradient, x => (float)x), reference.Gradients[name], naive.Gradients[name], $"d {name}");
        }
    }

    [Fact]
    public void Swapping_the_attention_changes_the_output_but_not_the_parameters()
    {
        using var scope = TorchReference.Start();
        manual_seed(11);
        using var model = new MultiheadSelfAttention(16, 2, new SoftmaxAttentionModule());
        var before = model.named_parameters().ToDictionary(p => p.name, p => Float32Tensors.Values(p.parameter));
        var x = randn(2, 9, 16);
        var softmax = Float32Tensors.Values(model.forward(x));
        AttentionModule[] others = [new LevAttentionModule(top: 2), new PolynomialAttentionModule(), new SketchedAttentionModule(), new TorchSdpaModule(causal: true)];
        foreach (var attention in others)
        {
            model.Attention = attention;
            var swapped = Float32Tensors.Values(model.forward(x));
            Assert.NotEqual(softmax, swapped);
            Assert.All(swapped, v => Assert.True(float.IsFinite(v)));
            var after = model.named_parameters().ToDictionary(p => p.name, p => Float32Tensors.Values(p.parameter));
            Assert.Equal(before.Keys, after.Keys);
            Assert.All(before, p => Assert.Equal(p.Value, after[p.Key]));
        }

        model.Attention = new SoftmaxAttentionModule();
        Assert.Equal(softmax, Float32Tensors.Values(model.forward(x)));
    }

    [Fact]
    public void Every_attention_module_trains_the_projections()
    {
        // A backward through each module reaches every parameter with finite, non-zero gradients.
        using var scope = TorchReference.Start();
        AttentionModule[] modules = [new SoftmaxAttentionModule(causal: true), new LevAttentionModule(top: 4, keepFirst: 1), new PolynomialAttentionModule(causal: true),
            new SketchedAttentionModule(sketchSize: 8, seed: 1, causal: true)];
        foreach (var attention in modules)
        {
            manual_seed(13);
            using var model = new MultiheadSelfAttention(8, 2, attention);
            (model.forward(0.5f * randn(2, 9, 8)) * randn(2, 9, 8)).sum().backward();
            foreach (var (name, parameter) in model.named_parameters())
            {
                var g = Float32Tensors.Values(parameter.grad!);
                Assert.All(g, v => Assert.True(float.IsFinite(v), $"{attention.Describe()}: {name}"));
                Assert.Contains(g, v => v != 0);
            }
        }
    }
}
