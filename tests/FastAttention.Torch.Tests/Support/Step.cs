using FastAttention.Tests.Support;

namespace FastAttention.Torch.Tests.Support;

/// <summary>
/// One training step's data for a case: seeded inputs and output gradient, and the buffers our forward (output,
/// log-sum-exp) and backward (dQ, dK, dV) write.
/// </summary>
internal sealed class Step(TorchCase c)
{
    private readonly (float[] Q, float[] K, float[] V) _inputs = Data.Inputs(c.Shape, c.Seed);

    public float[] Query => _inputs.Q;

    public float[] Key => _inputs.K;

    public float[] Value => _inputs.V;

    public float[] OutputGradient { get; } = Data.Normal(c.Shape.OutputLength, c.Seed + 3);

    public float[] Output { get; } = new float[c.Shape.OutputLength];

    public float[] LogSumExp { get; } = new float[(long)c.Shape.BatchSize * c.Shape.HeadCount * c.Shape.QueryCount];

    public float[] QueryGradient { get; } = new float[c.Shape.QueryLength];

    public float[] KeyGradient { get; } = new float[c.Shape.KeyLength];

    public float[] ValueGradient { get; } = new float[c.Shape.ValueLength];

    /// <summary>float64 leaves holding the inputs, for libtorch's autograd.</summary>
    public (global::TorchSharp.torch.Tensor Q, global::TorchSharp.torch.Tensor K, global::TorchSharp.torch.Tensor V) Leaves() =>
        (TorchReference.Leaf(Query, TorchReference.QueryDims(c.Shape)),
         TorchReference.Leaf(Key, TorchReference.KeyDims(c.Shape)),
         TorchReference.Leaf(Value, TorchReference.ValueDims(c.Shape)));
}
