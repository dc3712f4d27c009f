using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>How the functions see TorchSharp tensors: checks of dtype, device and rank, and float spans over their storage.</summary>
internal static class TensorViews
{
    /// <summary>Throws an <see cref="ArgumentException"/> naming <paramref name="name"/> unless the tensor is float32 on the CPU.</summary>
    public static void RequireFloat32Cpu(Tensor tensor, string name)
    {
        ArgumentNullException.ThrowIfNull(tensor, name);
        if (tensor.dtype != ScalarType.Float32)
        {
            throw new ArgumentException($"{name} must be a float32 tensor, not {tensor.dtype}.", name);
        }

        if (tensor.device_type != global::TorchSharp.DeviceType.CPU)
        {
            throw new ArgumentException($"{name} must be on the CPU, not {tensor.device}.", name);
        }
    }

    /// <summary>The query, key and value as <c>[batch, heads, n, d]</c> views (ranks 2, 3 and 4 accepted, all the same rank).</summary>
    public static (Tensor Query, Tensor Key, Tensor Value) AsFourDimensional(Tensor query, Tensor key, Tensor value)
    {
        var lifted = AsFourDimensional([(query, nameof(query)), (key, nameof(key)), (value, nameof(value))]);
        return (lifted[0], lifted[1], lifted[2]);
    }

    /// <summary>
    /// Float32 CPU tensors of one rank (2, 3 or 4; the first one's) as <c>[batch, heads, n, d]</c> views; the first is the
    /// query, whose rank the others must share. Errors name the tensor.
    /// </summary>
    public static Tensor[] AsFourDimensional(ReadOnlySpan<(Tensor Tensor, string Name)> tensors)
    {
        foreach (var (tensor, name) in tensors)
        {
            RequireFloat32Cpu(tensor, name);
        }

        var (query, queryName) = tensors[0];
        long rank = query.dim();
        if (rank is < 2 or > 4)
        {
            throw new ArgumentException($"{queryName} must have rank 2 ([n, d]), 3 ([heads, n, d]) or 4 ([batch, heads, n, d]), not {rank}.", queryName);
        }

        var lifted = new Tensor[tensors.Length];
        for (int i = 0; i < tensors.Length; i++)
        {
            var (tensor, name) = tensors[i];
            if (tensor.dim() != rank)
            {
                throw new ArgumentException($"{name} must have the {queryName}'s rank {rank}, not {tensor.dim()}.", name);
            }

            lifted[i] = Lift(tensor);
        }

        return lifted;
    }

    /// <summary>The <c>[batch, heads, nq, dv]</c> output at the query's rank (2: <c>[nq, dv]</c>, 3: <c>[heads, nq, dv]</c>).</summary>
    public static Tensor AtRank(Tensor output, long rank) => rank switch
    {
        2 => output.squeeze(0).squeeze(0),
        3 => output.squeeze(0),
        _ => output,
    };

    /// <summary>Whether an output gradient holds NaN or infinity (then a backward returns NaN gradients instead of throwing).</summary>
    public static bool NonFinite(Tensor outputGradient) => !outputGradient.isfinite().all().item<bool>();

    /// <summary>NaN gradients shaped like the inputs, and no gradient for the trailing options argument.</summary>
    public static List<Tensor> NaNGradients(params Tensor[] inputs) => [.. inputs.Select(t => full_like(t, float.NaN)), null!];

    /// <summary>The attention shape of <c>[batch, heads, n, d]</c> query, key and value tensors (the core validates the rest).</summary>
    public static AttentionShape Shape(Tensor query, Tensor key, Tensor value) =>
        new(Size(query, 0, nameof(query)), Size(query, 1, nameof(query)), Size(query, 2, nameof(query)), Size(key, 2, nameof(key)),
            Size(query, 3, nameof(query)), Size(value, 3, nameof(value)), Size(key, 1, nameof(key)));

    /// <summary>
    /// The first three of an autograd node's arguments (the <c>[batch, heads, n, d]</c> query, key and value) as contiguous
    /// tensors (the same storage when already contiguous, else one copy), and their attention shape.
    /// </summary>
    public static (Tensor Query, Tensor Key, Tensor Value, AttentionShape Shape) Contiguous(object[] vars)
    {
        var q = ((Tensor)vars[0]).contiguous();
        var k = ((Tensor)vars[1]).contiguous();
        var v = ((Tensor)vars[2]).contiguous();
        return (q, k, v, Shape(q, k, v));
    }

    /// <summary>Uninitialised float32 output <c>[batch, heads, nq, dv]</c> and log-sum-exp <c>[batch, heads, nq]</c> tensors for a kernel to fill.</summary>
    public static (Tensor Output, Tensor LogSumExp) Outputs(AttentionShape shape) =>
        (empty([shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.ValueDim], ScalarType.Float32),
         empty([shape.BatchSize, shape.HeadCount, shape.QueryCount], ScalarType.Float32));

    /// <summary>The float elements of a contiguous CPU float32 tensor, its storage itself (no copy).</summary>
    public static Span<float> Floats(Tensor contiguous) => MemoryMarshal.Cast<byte, float>(contiguous.bytes);

    private static Tensor Lift(Tensor t) => t.dim() switch
    {
        2 => t.unsqueeze(0).unsqueeze(0),
        3 => t.unsqueeze(0),
        _ => t,
    };

    /// <summary>Dimension <paramref name="axis"/> of <paramref name="t"/> as an int (the core's sizes), or an error naming the tensor.</summary>
    public static int Size(Tensor t, int axis, string name)
    {
        long size = t.size(axis);
        return size <= int.MaxValue ? (int)size : throw new ArgumentException($"{name} dimension {axis} is {size}, more than {int.MaxValue}.", name);
    }
}
