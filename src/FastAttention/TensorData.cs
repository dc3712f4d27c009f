using System.Numerics.Tensors;

namespace FastAttention;

/// <summary>
/// A dense, C-order (row-major) array with an explicit shape: what the file readers return and the
/// writers take. The base type lets a file hold tensors of different element types.
/// </summary>
public abstract class TensorData
{
    private protected TensorData(int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        Shape = (int[])shape.Clone();
        long count = 1;
        foreach (int length in Shape)
        {
            if (length < 0)
            {
                throw new ArgumentException($"Shape [{string.Join(", ", Shape)}] has a negative dimension.", nameof(shape));
            }

            count = checked(count * length);
        }

        ElementCount = count;
    }

    /// <summary>The dimensions, outermost first. An empty shape is a scalar with one element.</summary>
    public IReadOnlyList<int> Shape { get; }

    /// <summary>The number of elements: the product of <see cref="Shape"/>.</summary>
    public long ElementCount { get; }

    /// <summary>The number of dimensions.</summary>
    public int Rank => Shape.Count;

    /// <summary>The element type as a short name (<c>float32</c>, <c>int64</c>, ...).</summary>
    public abstract string ElementTypeName { get; }

    /// <summary>Formats the shape as <c>[a, b, c]</c>, the form every error message uses.</summary>
    public string ShapeText => FormatShape(Shape);

    /// <summary>Formats a shape as <c>[a, b, c]</c>.</summary>
    /// <param name="shape">The dimensions.</param>
    /// <returns>The text.</returns>
    public static string FormatShape(IEnumerable<int> shape) => "[" + string.Join(", ", shape) + "]";
}

/// <summary>A dense, C-order array of <typeparamref name="T"/> with an explicit shape.</summary>
/// <typeparam name="T">The element type: <see cref="float"/>, <see cref="double"/>, <see cref="int"/> or <see cref="long"/>.</typeparam>
public sealed class TensorData<T> : TensorData
    where T : unmanaged
{
    /// <summary>Wraps <paramref name="data"/> (not copied) as an array of the given shape.</summary>
    /// <param name="data">The elements in C order; its length must equal the product of <paramref name="shape"/>.</param>
    /// <param name="shape">The dimensions, outermost first.</param>
    public TensorData(T[] data, params int[] shape)
        : base(shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.LongLength != ElementCount)
        {
            throw new ArgumentException(
                $"Data has {data.LongLength} elements but shape {FormatShape(shape)} needs {ElementCount}.", nameof(data));
        }

        if (typeof(T) != typeof(float) && typeof(T) != typeof(double) && typeof(T) != typeof(int) && typeof(T) != typeof(long))
        {
            throw new NotSupportedException($"Element type {typeof(T).Name} is not supported; use float, double, int or long.");
        }

        Data = data;
    }

    /// <summary>The elements in C order.</summary>
    public T[] Data { get; }

    /// <inheritdoc/>
    public override string ElementTypeName =>
        typeof(T) == typeof(float) ? "float32" :
        typeof(T) == typeof(double) ? "float64" :
        typeof(T) == typeof(int) ? "int32" : "int64";

    /// <summary>The data as a .NET tensor span of the same shape.</summary>
    /// <returns>A dense tensor span over <see cref="Data"/>.</returns>
    public TensorSpan<T> AsTensorSpan()
    {
        Span<nint> lengths = stackalloc nint[Rank];
        for (int i = 0; i < Rank; i++)
        {
            lengths[i] = Shape[i];
        }

        return new TensorSpan<T>(Data, lengths);
    }
}
