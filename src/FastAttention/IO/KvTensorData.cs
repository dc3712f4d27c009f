namespace FastAttention.IO;

/// <summary>
/// A key or value tensor read from a file into a <see cref="KvElementType"/> (<see cref="NumpyFile.ReadKv"/>,
/// <see cref="NpzFile.ReadKv"/>, <see cref="SafeTensorsFile.ReadKv"/>), with the file's shape: rows are the last dimension.
/// </summary>
/// <param name="Tensor">The values in the asked type, rows of the shape's last dimension.</param>
/// <param name="Shape">The file's dimensions, outermost first (C order).</param>
/// <param name="FileType">The element type the file stores, as NumPy names it (<c>float16</c>, <c>bfloat16</c>, <c>float32</c>, <c>float64</c>, <c>int8</c>, ...).</param>
/// <param name="Converted">
/// Whether the values went through float32 on the way in: false when the file already held the asked type (its elements
/// are wrapped as stored, bit for bit, after one copy), true when they were widened (a float16 file asked as float32) or
/// rounded into the type (a float32 file asked as float16, bfloat16 or q8).
/// </param>
public sealed record KvTensorData(KvTensor Tensor, IReadOnlyList<int> Shape, string FileType, bool Converted)
{
    /// <summary>The number of dimensions.</summary>
    public int Rank => Shape.Count;

    /// <summary>The shape as text, e.g. <c>[8, 42, 15]</c>.</summary>
    public string ShapeText => TensorData.FormatShape(Shape);
}
