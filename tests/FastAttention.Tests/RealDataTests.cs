using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Real attention tensors tapped from PaddleOCR PP-OCRv4 run in ONNX Runtime (data/ocr; provenance in data/ocr/README.md).</summary>
public class RealDataTests
{
    public static TheoryData<string, string> Sets() => new()
    {
        { "line40", "block1" }, { "line40", "block2" }, { "line260", "block1" }, { "line260", "block2" },
    };

    [Theory]
    [MemberData(nameof(Sets))]
    public void Exact_attention_matches_onnx_runtime_output(string line, string block)
    {
        TensorData<float> q = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "q.npy"));
        TensorData<float> k = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "k.npy"));
        TensorData<float> v = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "v.npy"));
        TensorData<float> expected = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "out.npy"));
        var shape = new AttentionShape(1, q.Shape[0], q.Shape[1], k.Shape[1], q.Shape[2], v.Shape[2]);
        Assert.Equal(8, shape.HeadCount);
        Assert.Equal(15, shape.HeadDim);

        foreach (FastAttention.Kernels.AttentionKernel kernel in KernelsFor.Shape(shape.QueryCount, shape.KeyCount))
        {
            var output = new float[shape.OutputLength];
            ExactAttention.Compute(q.Data, k.Data, v.Data, shape, output, new ExactAttentionOptions { Kernel = kernel.Name });
            double maxDiff = 0, maxOut = 0;
            for (int i = 0; i < output.Length; i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(output[i] - expected.Data[i]));
                maxOut = Math.Max(maxOut, Math.Abs(expected.Data[i]));
            }

            Assert.True(maxDiff <= Tolerance.OnnxRuntimeRelative * maxOut,
                $"{kernel.Name} {line}/{block}: max |ours - ORT| = {maxDiff:E3}, allowed {Tolerance.OnnxRuntimeRelative * maxOut:E3}");

            // And against our float64 reference, at the usual exact tolerance.
            var reference = new double[shape.OutputLength];
            ReferenceAttention.Compute(q.Data, k.Data, v.Data, shape, reference);
            Tolerance.AssertExact(output, reference, $"{kernel.Name} {line}/{block}");
        }
    }

    [Fact]
    public void Library_reference_agrees_with_the_test_oracle()
    {
        var s = new AttentionShape(2, 4, 33, 41, 7, 5, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(s, 99);
        var library = new double[s.OutputLength];
        ReferenceAttention.Compute(q, k, v, s, library, causal: true);
        double[] oracle = Reference.Attention(q, k, v, s, new Reference.Options(Causal: true));
        for (int i = 0; i < library.Length; i++)
        {
            Assert.Equal(oracle[i], library[i], 1e-12);
        }
    }

    /// <summary>A 1000-token line (two heads of block 2, one of them the most peaked head of the model; see
    /// data/ocr/README.md): key tiles of 512 with a partial last tile, on real scores. The data is in the
    /// repository, so a missing file fails the test rather than skipping it.</summary>
    [Fact]
    public void Thousand_token_line_matches_onnx_runtime_output()
    {
        string dir = Data.Fixture("ocr", "line1000", "block2");
        TensorData<float> q = NumpyFile.ReadFloat32(Path.Combine(dir, "q.npy"));
        TensorData<float> k = NumpyFile.ReadFloat32(Path.Combine(dir, "k.npy"));
        TensorData<float> v = NumpyFile.ReadFloat32(Path.Combine(dir, "v.npy"));
        TensorData<float> expected = NumpyFile.ReadFloat32(Path.Combine(dir, "out.npy"));
        Assert.Equal([2, 1000, 15], q.Shape);
        var shape = new AttentionShape(1, q.Shape[0], q.Shape[1], k.Shape[1], q.Shape[2], v.Shape[2]);
        Assert.Equal(shape.OutputLength, expected.Data.Length);

        foreach (FastAttention.Kernels.AttentionKernel kernel in KernelsFor.Shape(shape.QueryCount, shape.KeyCount))
        {
            var output = new float[shape.OutputLength];
            ExactAttention.Compute(q.Data, k.Data, v.Data, shape, output, new ExactAttentionOptions { Kernel = kernel.Name });
            double maxOut = expected.Data.Max(Math.Abs);
            double maxDiff = output.Zip(expected.Data, (a, b) => Math.Abs(a - b)).Max();
            Assert.True(maxDiff <= Tolerance.OnnxRuntimeRelative * maxOut,
                $"{kernel.Name} line1000/block2: max |ours - ORT| = {maxDiff:E3}, allowed {Tolerance.OnnxRuntimeRelative * maxOut:E3}");
        }
    }
}
