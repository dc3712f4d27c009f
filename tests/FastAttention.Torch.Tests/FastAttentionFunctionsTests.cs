using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// FastAttentionFunctions.ScaledDotProductAttention: its forward is our library's output bit for bit, and its autograd
/// gradients match libtorch's float64 autograd of the written-out formula (plain, causal, grouped-query, nq != nk).
/// </summary>
public sealed class FastAttentionFunctionsTests
{
    /// <summary>Named cases: plain, causal (nq &lt; nk and nq &gt; nk, whose first rows see no key), GQA, nq != nk, d = 1 and 64.</summary>
    public static TheoryData<string> Named => [.. NamedCases.Keys];

    public static IEnumerable<object[]> Seeds => TorchCase.Seeds(12);

    private static readonly Dictionary<string, TorchCase> NamedCases = new()
    {
        ["plain"] = new(1, new AttentionShape(2, 2, 7, 7, 8, 8), false, null, null, null),
        ["causal"] = new(2, new AttentionShape(1, 2, 5, 9, 15, 15), true, null, null, null),
        ["causal, nq > nk"] = new(3, new AttentionShape(1, 1, 9, 5, 8, 8), true, 0.5f, null, null),
        ["gqa"] = new(4, new AttentionShape(1, 4, 7, 31, 8, 8, 2), false, 0.3f, null, null),
        ["gqa, causal"] = new(5, new AttentionShape(2, 6, 33, 33, 64, 15, 3), true, null, null, null),
        ["nq != nk, d 1"] = new(6, new AttentionShape(2, 1, 33, 7, 1, 1), false, null, null, null),
        ["nq 1"] = new(7, new AttentionShape(1, 2, 1, 113, 8, 8), true, null, null, null),
    };

    [Theory]
    [MemberData(nameof(Named))]
    public void Named_case_matches_library_and_float64_autograd(string name) => Check(NamedCases[name]);

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Random_case_matches_library_and_float64_autograd(int seed) => Check(TorchCase.Draw(seed, withBias: false) with { Mask = null });

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void Lower_ranks_are_one_batch_and_one_head(int rank)
    {
        using var scope = TorchReference.Start();
        var c = new TorchCase(11, new AttentionShape(1, 1, 7, 9, 8, 8), true, null, null, null);
        var (q, k, v) = Data.Inputs(c.Shape, c.Seed);
        long[] Dims(long n, long d) => rank == 2 ? [n, d] : [1, n, d];
        var output = FastAttentionFunctions.ScaledDotProductAttention(Float32(q, Dims(7, 8)), Float32(k, Dims(9, 8)), Float32(v, Dims(9, 8)), causal: true);
        Assert.Equal(Dims(7, 8), output.shape);

        var expected = new float[c.Shape.OutputLength];
        ExactAttention.Compute(q, k, v, c.Shape, expected, new ExactAttentionOptions { Causal = true });
        Assert.Equal(expected, output.contiguous().data<float>().ToArray());
    }

    [Fact]
    public void Non_contiguous_inputs_give_the_contiguous_result_and_gradients()
    {
        using var scope = TorchReference.Start();
        var s = new AttentionShape(2, 2, 7, 9, 8, 8);
        var (q, k, v) = Data.Inputs(s, 21);
        // Transposed storage: [b, n, h, d] permuted to [b, h, n, d] is a non-contiguous view.
        Tensor Leaf(float[] data, long n, bool contiguous)
        {
            var t = Float32(data, [s.BatchSize, s.HeadCount, n, s.HeadDim]);
            return (contiguous ? t : t.transpose(1, 2).contiguous().transpose(1, 2)).detach().requires_grad_(true);
        }

        var weights = Float32(Data.Normal(s.OutputLength, 22), TorchReference.OutputDims(s));
        (Tensor Output, Tensor[] Grads) Run(bool contiguous)
        {
            var (tq, tk, tv) = (Leaf(q, 7, contiguous), Leaf(k, 9, contiguous), Leaf(v, 9, contiguous));
            Assert.Equal(contiguous, tq.is_contiguous());
            var output = FastAttentionFunctions.ScaledDotProductAttention(tq, tk, tv);
            (output * weights).sum().backward();
            return (output, [tq.grad!, tk.grad!, tv.grad!]);
        }

        var (denseOut, denseGrads) = Run(true);
        var (stridedOut, stridedGrads) = Run(false);
        Assert.Equal(Values(denseOut), Values(stridedOut));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Values(denseGrads[i]), Values(stridedGrads[i]));
        }
    }

    [Fact]
    public void Contiguous_float32_storage_is_read_in_place()
    {
        // The premise of the zero-copy path (TensorViews.Floats): a contiguous CPU tensor's bytes span is its storage.
        using var scope = TorchReference.Start();
        var t = zeros(2, 3, dtype: float32);
        var view = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes);
        Assert.Equal(6, view.Length);
        view[4] = 42f;
        Assert.Equal(42f, t[1, 1].item<float>());
    }

    [Fact]
    public void Non_finite_output_gradient_propagates_instead_of_throwing_inside_autograd()
    {
        // An exception thrown inside TorchSharp's backward callback cannot reach the caller (it ends the process), so the
        // backward passes NaN and infinity through as PyTorch does.
        using var scope = TorchReference.Start();
        var s = new AttentionShape(1, 1, 4, 4, 8, 8);
        var (q, k, v) = Data.Inputs(s, 41);
        var query = Leaf32(q, TorchReference.QueryDims(s));
        var output = FastAttentionFunctions.ScaledDotProductAttention(query, Float32(k, TorchReference.KeyDims(s)), Float32(v, TorchReference.ValueDims(s)));
        var weights = ones_like(output);
        weights[0, 0, 1, 2] = tensor(float.NaN);
        (output * weights).sum().backward();
        var grad = Values(query.grad!);
        Assert.Contains(grad, float.IsNaN);
        Assert.All(grad[..8], x => Assert.True(float.IsFinite(x)));
    }

    [Fact]
    public void Non_finite_input_is_the_forward_s_named_error()
    {
        using var scope = TorchReference.Start();
        var q = randn(1, 1, 4, 8);
        q[0, 0, 0, 0] = tensor(float.NaN);
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(q, randn(1, 1, 4, 8), randn(1, 1, 4, 8)));
        Assert.Equal("query", e.ParamName);
    }

    [Theory]
    [InlineData(0, 5)]
    [InlineData(4, 0)]
    [InlineData(0, 0)]
    public void Empty_inputs_are_the_core_s_clear_error(int nq, int nk)
    {
        using var scope = TorchReference.Start();
        var query = zeros([1L, 2, nq, 8], dtype: float32).requires_grad_(true);
        var key = zeros([1L, 2, nk, 8], dtype: float32);
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(query, key, key));
        Assert.Contains("empty tensors are an error", e.Message, StringComparison.Ordinal);
        var lev = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.LevAttention(query, key, key, top: 1));
        Assert.Contains("at least 1", lev.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Float64_input_is_a_named_error()
    {
        using var scope = TorchReference.Start();
        var q = randn(1, 1, 4, 8, dtype: float64);
        var k = randn(1, 1, 4, 8);
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(q, k, k));
        Assert.Equal("query", e.ParamName);
        Assert.Contains("float32", e.Message, StringComparison.Ordinal);
        var e2 = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(k, k, q));
        Assert.Equal("value", e2.ParamName);
    }

    [Fact]
    public void A_tensor_off_the_cpu_is_a_named_error_for_every_function()
    {
        // libtorch's meta device holds shapes without storage: the cheapest non-CPU device on a CPU-only machine.
        using var scope = TorchReference.Start();
        var x = randn(1, 1, 4, 8);
        var meta = empty([1L, 1, 4, 8], device: new Device(global::TorchSharp.DeviceType.META));
        Func<Tensor>[] calls =
        [
            () => FastAttentionFunctions.ScaledDotProductAttention(x, meta, x),
            () => FastAttentionFunctions.LevAttention(x, meta, x, top: 1),
            () => FastAttentionFunctions.PolynomialAttention(x, meta, x),
            () => FastAttentionFunctions.SketchedAttention(x, meta, x),
            () => FastAttentionFunctions.TensorAttention(x, meta, x, x, x),
        ];
        foreach (var call in calls)
        {
            var e = Assert.Throws<ArgumentException>(call);
            Assert.Contains("CPU", e.Message, StringComparison.Ordinal);
            Assert.True(e.ParamName is "key" or "key1", e.ParamName);
        }

        var mask = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(x, x, x, empty([4L, 4], device: new Device(global::TorchSharp.DeviceType.META))));
        Assert.Equal("mask", mask.ParamName);
    }

    [Fact]
    public void Wrong_rank_is_a_named_error()
    {
        using var scope = TorchReference.Start();
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(randn(8), randn(8), randn(8)));
        Assert.Equal("query", e.ParamName);
        Assert.Contains("rank", e.Message, StringComparison.Ordinal);
        var e5 = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(randn([1L, 1, 1, 4, 8]), randn([1L, 1, 1, 4, 8]), randn([1L, 1, 1, 4, 8])));
        Assert.Equal("query", e5.ParamName);
        var ek = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(randn(1, 4, 8), randn(4, 8), randn(1, 4, 8)));
        Assert.Equal("key", ek.ParamName);
    }

    [Fact]
    public void Mismatched_shapes_are_the_core_s_named_error()
    {
        using var scope = TorchReference.Start();
        // Head dims differ between query and key.
        var e = Assert.Throws<ArgumentException>(() => FastAttentionFunctions.ScaledDotProductAttention(randn(1, 1, 4, 8), randn(1, 1, 4, 7), randn(1, 1, 4, 8)));
        Assert.False(string.IsNullOrEmpty(e.ParamName));
    }

    private static void Check(TorchCase c)
    {
        using var scope = TorchReference.Start();
        var s = c.Shape;
        var (q, k, v) = Data.Inputs(s, c.Seed);
        var weights = Data.Normal(s.OutputLength, c.Seed + 50);

        // Ours through TorchSharp autograd: sum(O * W).backward().
        var (tq, tk, tv) = (Leaf32(q, TorchReference.QueryDims(s)), Leaf32(k, TorchReference.KeyDims(s)), Leaf32(v, TorchReference.ValueDims(s)));
        var output = FastAttentionFunctions.ScaledDotProductAttention(tq, tk, tv, causal: c.Causal, scale: c.Scale);
        (output * Float32(weights, TorchReference.OutputDims(s))).sum().backward();

        // The forward is the library's, bit for bit.
        var expected = new float[s.OutputLength];
        var lse = new float[(long)s.BatchSize * s.HeadCount * s.QueryCount];
        ExactAttention.Compute(q, k, v, s, expected, lse, new ExactAttentionOptions { Causal = c.Causal, Scale = c.Scale });
        Assert.Equal(expected, Values(output));

        // Gradients against libtorch's float64 autograd of the written-out formula.
        var leaves = (TorchReference.Leaf(q, TorchReference.QueryDims(s)), TorchReference.Leaf(k, TorchReference.KeyDims(s)), TorchReference.Leaf(v, TorchReference.ValueDims(s)));
        var reference = TorchReference.Softmax(leaves.Item1, leaves.Item2, leaves.Item3, s, c.ScaleOr(1 / Math.Sqrt(s.HeadDim)), c.Causal).Gradients(weights, leaves);
        Compare.Close(Values(tq.grad!), reference.Query, "dQ", c, reference.QueryMagnitude);
        Compare.Close(Values(tk.grad!), reference.Key, "dK", c, reference.KeyMagnitude);
        Compare.Close(Values(tv.grad!), reference.Value, "dV", c, reference.ValueMagnitude);
    }

    private static Tensor Float32(float[] data, long[] dims) => Float32Tensors.Constant(data, dims);

    private static Tensor Leaf32(float[] data, long[] dims) => Float32Tensors.Leaf(data, dims);

    private static float[] Values(Tensor t) => Float32Tensors.Values(t);
}
