namespace FastAttention.IO;

/// <summary>Reading a slice of the rows of a <c>.npy</c> file by seeking, without reading the whole file.</summary>
public static partial class NumpyFile
{
    /// <summary>The shape of the array in a <c>.npy</c> file, reading only its header.</summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <returns>The shape.</returns>
    /// <exception cref="TensorFileException">The file is missing or its header is malformed, or its length does not match the header.</exception>
    public static int[] ReadShape(string path)
    {
        var context = new FileContext(path, null);
        using FileStream stream = Files.OpenRead(path);
        return RowLayout.Of(stream, context).Shape;
    }

    /// <summary>
    /// Reads the rows of the given global <paramref name="ranges"/> of the second-to-last axis of a C-order array
    /// <c>[..., n, d]</c> (or <c>[n, d]</c>), for every leading index, as float32: the result has shape
    /// <c>[..., localN, d]</c> where localN is the sum of the ranges' counts, and holds for every leading index the rows of
    /// the ranges one after another, in the order given. Only those rows are read (by seeking); the file's length must still
    /// match its header, so a truncated file fails before any row is read. Element types and byte orders are those
    /// <see cref="ReadFloat32(string)"/> accepts (float16, float64 and integers are converted); Fortran order is refused,
    /// as its rows are not contiguous.
    /// </summary>
    /// <param name="path">The <c>.npy</c> file.</param>
    /// <param name="ranges">Global row ranges (start, count), each within <c>[0, n]</c>; counts may be 0.</param>
    /// <returns>The rows.</returns>
    /// <exception cref="TensorFileException">The file is missing, malformed, truncated, of an unsupported type or layout, of rank
    /// below 2 (<see cref="TensorFileErrorKind.BadShape"/>), or a range lies outside its rows (<see cref="TensorFileErrorKind.BadShape"/>).</exception>
    /// <exception cref="ArgumentNullException"><paramref name="ranges"/> is null.</exception>
    public static TensorData<float> ReadRows(string path, IReadOnlyList<(long Start, long Count)> ranges)
    {
        ArgumentNullException.ThrowIfNull(ranges);
        var context = new FileContext(path, null);
        using FileStream stream = Files.OpenRead(path);
        RowLayout layout = RowLayout.Of(stream, context);
        if (layout.FortranOrder && layout.Shape.Length > 1)
        {
            throw context.Error(TensorFileErrorKind.UnsupportedLayout, -1, "Fortran-order arrays cannot be read by rows; save the array in C order");
        }

        long localRows = layout.CheckRanges(ranges, context);
        var data = new float[layout.Lead * localRows * layout.Width];
        long at = 0;
        foreach ((long offset, long count) in layout.Pieces(ranges))
        {
            stream.Position = offset;
            float[] piece = Payload.Read<float>(stream, count, layout.Type, layout.BigEndian, count * layout.ElementSize, context, offset);
            piece.CopyTo(data, at);
            at += count;
        }

        int[] shape = [.. layout.Shape];
        shape[^2] = (int)localRows;
        return new TensorData<float>(data, shape);
    }

    /// <summary>Where the rows of a <c>[..., n, d]</c> array lie in its file: the header's facts and the data offset.</summary>
    internal sealed record RowLayout(int[] Shape, ElementType Type, bool BigEndian, bool FortranOrder, long DataOffset)
    {
        public int ElementSize => Payload.SizeOf(Type);

        /// <summary>The product of the leading dimensions (1 for <c>[n, d]</c>).</summary>
        public long Lead => Shape[..^2].Aggregate(1L, (a, x) => a * x);

        public long Rows => Shape[^2];

        public long Width => Shape[^1];

        /// <summary>Reads and checks the header of an array of rank 2 or more, and that the file holds exactly its data.</summary>
        public static RowLayout Of(Stream stream, FileContext context)
        {
            long length = stream.Length;
            (ParsedHeader parsed, long offset) = ReadHeader(stream, length, context);
            long count = CheckedFileElementCount(parsed.Shape, context, offset);
            long bytes = count * Payload.SizeOf(parsed.Type);
            if (length - offset < bytes)
            {
                throw context.Error(TensorFileErrorKind.Truncated, length,
                    $"data ends after {length - offset} bytes but the header promises {bytes} ({count} elements of {Payload.Name(parsed.Type)})");
            }

            if (length - offset > bytes)
            {
                throw context.Error(TensorFileErrorKind.SizeMismatch, offset + bytes, $"{length - offset - bytes} unexpected bytes after the {bytes}-byte payload");
            }

            int[] shape = Array.ConvertAll(parsed.Shape, x => (int)x);
            if (shape.Length < 2)
            {
                throw context.Error(TensorFileErrorKind.BadShape, -1,
                    $"has shape {TensorData.FormatShape(shape)}; rows need an array [..., n, d] of rank 2 or more");
            }

            return new RowLayout(shape, parsed.Type, parsed.BigEndian, parsed.FortranOrder, offset);
        }

        /// <summary>
        /// The element count of a shape whose byte size fits a file; unlike a whole read, it may exceed what one array holds,
        /// since only a slice is read into memory.
        /// </summary>
        private static long CheckedFileElementCount(long[] shape, FileContext context, long offset)
        {
            Int128 count = 1;
            foreach (long length in shape)
            {
                if (length is < 0 or > int.MaxValue)
                {
                    throw context.Error(TensorFileErrorKind.BadShape, offset, $"shape has a dimension of {length} (from 0 to {int.MaxValue} are accepted)");
                }

                count *= length;
                if (count > long.MaxValue / 8)
                {
                    throw context.Error(TensorFileErrorKind.BadShape, offset, $"shape [{string.Join(", ", shape)}] has more bytes than a file can hold");
                }
            }

            return (long)count;
        }

        /// <summary>Checks every range lies within the rows and returns the total row count.</summary>
        public long CheckRanges(IReadOnlyList<(long Start, long Count)> ranges, FileContext context)
        {
            long total = 0;
            foreach ((long start, long count) in ranges)
            {
                if (start < 0 || count < 0 || start > Rows - count)
                {
                    throw context.Error(TensorFileErrorKind.BadShape, -1,
                        $"row range (start {start}, count {count}) lies outside the {Rows} rows of shape {TensorData.FormatShape(Shape)}");
                }

                total += count;
            }

            if ((Int128)total * Lead * Width > Array.MaxLength)
            {
                throw context.Error(TensorFileErrorKind.BadShape, -1,
                    $"the {total} rows asked for, of shape {TensorData.FormatShape(Shape)}, hold more elements than one array can ({Array.MaxLength})");
            }

            return total;
        }

        /// <summary>The file offset and element count of every contiguous piece, in storage order: per leading index, per range.</summary>
        public IEnumerable<(long Offset, long Count)> Pieces(IReadOnlyList<(long Start, long Count)> ranges)
        {
            for (long b = 0; b < Lead; b++)
            {
                foreach ((long start, long count) in ranges)
                {
                    if (count > 0)
                    {
                        yield return (DataOffset + ((((b * Rows) + start) * Width) * ElementSize), count * Width);
                    }
                }
            }
        }
    }
}
