using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Tensor attention honours a forced kernel (option Kernel), and says why when it cannot.</summary>
public class TensorKernelTests
{
    // Three queries times four (j1) tuples: twelve virtual query rows per call, which every kernel takes (split-key takes at most 16).
    private static readonly TensorAttentionShape Shape = new(2, 3, 4, 3, 2);

    private static (float[] Q, ReadOnlyMemory<float>[] K, ReadOnlyMemory<float>[] V) Inputs(TensorAttentionShape s) =>
        (Data.Normal(s.QueryLength, 1), [Data.Normal(s.KeyLength, 2), Data.Normal(s.KeyLength, 3)], [Data.Normal(s.ValueLength, 4), Data.Normal(s.ValueLength, 5)]);

    public static TheoryData<string, bool> Kernels()
    {
        var data = new TheoryData<string, bool>();
        foreach ((string name, _, bool supported) in AttentionKernels.All)
        {
            // Tensor attention keeps float32 keys and values: the kernels of other storage types (named -f16, -bf16, -q8) never take them.
            if (supported && !KvElementTypes.Names.Skip(1).Any(type => name.EndsWith("-" + type, StringComparison.Ordinal)))
            {
                data.Add(name, false);
                data.Add(name, true);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Forcing_each_kernel_runs_it_and_matches_float64(string kernel, bool causal)
    {
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(Shape);
        var options = new TensorAttentionOptions { Kernel = kernel, Causal = causal };
        float[] output = new float[Shape.OutputLength];
        AttentionRun run = TensorAttention.Compute(q, k, v, Shape, output, options);
        Assert.Equal("tensor-" + kernel, run.Kernel);

        double[] expected = new double[Shape.OutputLength];
        ReferenceTensorAttention.Compute(q, k, v, Shape, expected, options);
        Tolerance.AssertExact(output, expected, kernel);
    }

    [Fact]
    public void An_unknown_kernel_is_an_argument_error_listing_the_known_ones()
    {
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(Shape);
        var ex = Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, Shape, new float[Shape.OutputLength], new TensorAttentionOptions { Kernel = "no-such-kernel" }));
        Assert.Contains("no-such-kernel", ex.Message);
        Assert.Contains("tiled-scalar", ex.Message);
    }

    [Fact]
    public void A_kernel_that_cannot_take_the_call_says_why()
    {
        // 40 queries x 4 tuples = 160 virtual rows per call: more than the split-key kernel's 16.
        var wide = Shape with { QueryCount = 40 };
        (float[] q, ReadOnlyMemory<float>[] k, ReadOnlyMemory<float>[] v) = Inputs(wide);
        string splitKey = AttentionKernels.All.First(x => x.Name.StartsWith("splitkey", StringComparison.Ordinal) && x.IsSupported).Name;
        var ex = Assert.Throws<NotSupportedException>(() => TensorAttention.Compute(q, k, v, wide, new float[wide.OutputLength], new TensorAttentionOptions { Kernel = splitKey }));
        Assert.Contains(splitKey, ex.Message);
        Assert.Contains("at most 16", ex.Message);

        foreach ((string name, _, bool supported) in AttentionKernels.All.Where(x => !x.IsSupported))
        {
            var cpu = Assert.Throws<NotSupportedException>(() => TensorAttention.Compute(q, k, v, wide, new float[wide.OutputLength], new TensorAttentionOptions { Kernel = name }));
            Assert.Contains("CPU", cpu.Message);
        }
    }
}
