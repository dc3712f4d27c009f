using FastAttention.PeerBenchmarks;
using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;

namespace FastAttention.Torch.Tests;

/// <summary>
/// The in-process peers of bench/FastAttention.PeerBenchmarks compute what they are timed for: ONNX Runtime's
/// MultiHeadAttention from our hand-written ONNX model, PyTorch's SDPA and ours, each against libtorch's float64
/// attention written out, on several heads (which the peers' layouts must not mix up), with and without the causal mask.
/// </summary>
public class PeerBenchmarkTests
{
    public static TheoryData<int, int, int, bool> Cases() => new()
    {
        { 1, 37, 16, false },
        { 1, 37, 16, true },
        { 3, 29, 8, false },
        { 3, 29, 8, true },
        { 2, 1, 4, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_peer_forward_matches_the_float64_reference(int heads, int n, int d, bool causal)
    {
        using var scope = TorchReference.Start();
        var shape = new AttentionShape(1, heads, n, n, d, d);
        var (q, k, v) = Data.Inputs(shape, seed: 11 * heads + n);
        double[] expected = Reference(q, k, v, shape, causal);

        using (var ort = new OrtPeer(q, k, v, n, heads, d, causal, threads: 1))
        {
            ort.Run();
            Tolerance.AssertExact(ort.Output(), expected, $"ONNX Runtime MultiHeadAttention, h={heads} n={n} d={d} causal={causal}");
        }

        using (var torch = new TorchPeer(q, k, v, null, n, d, causal, threads: 1, heads))
        {
            Tolerance.AssertExact(torch.Forward(copy: true), expected, $"PyTorch SDPA, h={heads} n={n} d={d} causal={causal}");
        }

        Tolerance.AssertExact(new OursPeer(q, k, v, null, n, d, causal, threads: 1, heads).Forward(), expected, $"ours, h={heads} n={n} d={d} causal={causal}");
    }

    [Fact]
    public void The_training_peers_agree_with_the_float64_gradients()
    {
        using var scope = TorchReference.Start();
        const int n = 33, d = 8;
        var shape = AttentionShape.SingleHead(n, d);
        var (q, k, v) = Data.Inputs(shape, seed: 5);
        float[] outputGradient = Data.Normal(n * d, seed: 6);
        var (lq, lk, lv) = (TorchReference.Leaf(q, TorchReference.QueryDims(shape)), TorchReference.Leaf(k, TorchReference.KeyDims(shape)), TorchReference.Leaf(v, TorchReference.ValueDims(shape)));
        var forward = TorchReference.Softmax(lq, lk, lv, shape, 1 / Math.Sqrt(d), causal: true);
        double[] output = TorchReference.Values(forward.Output);
        var gradients = forward.Gradients(outputGradient, (lq, lk, lv));
        double[][] expected = [output, gradients.Query, gradients.Key, gradients.Value];
        string[] names = ["O", "dQ", "dK", "dV"];

        using var torch = new TorchPeer(q, k, v, outputGradient, n, d, causal: true, threads: 1);
        var t = torch.Run(copy: true)!.Value;
        var o = new OursPeer(q, k, v, outputGradient, n, d, causal: true, threads: 1).Run();
        float[][] torchResults = [t.O, t.Dq, t.Dk, t.Dv];
        float[][] ourResults = [o.O, o.Dq, o.Dk, o.Dv];
        for (int i = 0; i < names.Length; i++)
        {
            Tolerance.AssertExact(torchResults[i], expected[i], $"PyTorch {names[i]}");
            Tolerance.AssertExact(ourResults[i], expected[i], $"ours {names[i]}");
        }
    }

    [Fact]
    public void The_onnx_model_names_the_fused_operator_and_its_heads()
    {
        byte[] model = OnnxAttentionModel.MultiHeadAttention(n: 16, heads: 4, d: 8, causal: true);
        string text = System.Text.Encoding.Latin1.GetString(model);
        Assert.Contains("MultiHeadAttention", text, StringComparison.Ordinal);
        Assert.Contains("com.microsoft", text, StringComparison.Ordinal);
        Assert.Contains("unidirectional", text, StringComparison.Ordinal);
        Assert.NotEqual(model, OnnxAttentionModel.MultiHeadAttention(n: 16, heads: 4, d: 8, causal: false));
    }

    private static double[] Reference(float[] q, float[] k, float[] v, AttentionShape shape, bool causal)
    {
        var forward = TorchReference.Softmax(
            TorchReference.Constant(q, TorchReference.QueryDims(shape)),
            TorchReference.Constant(k, TorchReference.KeyDims(shape)),
            TorchReference.Constant(v, TorchReference.ValueDims(shape)),
            shape, 1 / Math.Sqrt(shape.HeadDim), causal);
        return TorchReference.Values(forward.Output);
    }
}
