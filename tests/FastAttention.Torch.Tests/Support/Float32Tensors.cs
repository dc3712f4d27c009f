using static TorchSharp.torch;

namespace FastAttention.Torch.Tests.Support;

/// <summary>float32 tensors for the FastAttention.TorchSharp functions under test.</summary>
internal static class Float32Tensors
{
    public static Tensor Constant(float[] data, long[] dims) => tensor(data, dims, dtype: float32);

    public static Tensor Leaf(float[] data, long[] dims) => tensor(data, dims, dtype: float32, requires_grad: true);

    public static float[] Values(Tensor t) => t.detach().contiguous().data<float>().ToArray();
}
