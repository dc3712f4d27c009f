using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace FastAttention.IO;

/// <summary>
/// One float32 <c>.npy</c> file <c>[..., n, d]</c> written by several writers, each its own rows (for example one process per
/// slice of the sequence): the owner <see cref="Create"/>s the file with its full header and size, every writer (the owner too)
/// <see cref="WriteRows"/> at its rows' offsets with positional writes, and once all are done the owner <see cref="Commit"/>s
/// it (renames it to the destination) or <see cref="Abort"/>s it (deletes it). Write to a temp file beside the destination and
/// commit, so that a failed run never leaves a partial file at the destination. The file is what
/// <see cref="NumpyFile.Write(string, TensorData)"/> writes for the whole array, byte for byte.
/// </summary>
public sealed class NumpySliceWriter : IDisposable
{
    private readonly NumpyFile.RowLayout _layout;
    private readonly bool _owner;
    private SafeFileHandle? _handle;

    private NumpySliceWriter(string path, SafeFileHandle handle, NumpyFile.RowLayout layout, bool owner)
    {
        Path = path;
        _handle = handle;
        _layout = layout;
        _owner = owner;
    }

    /// <summary>The file being written.</summary>
    public string Path { get; }

    /// <summary>The shape of the whole array.</summary>
    public IReadOnlyList<int> Shape => _layout.Shape;

    /// <summary>
    /// Creates (or replaces) <paramref name="path"/> holding a float32 array of <paramref name="shape"/>: the header, and the data
    /// as zeros until written. The writer returned owns the file: it commits or deletes it.
    /// </summary>
    /// <param name="path">The file to create, usually a temp file beside the destination.</param>
    /// <param name="shape">The array's shape, rank 2 or more, <c>[..., n, d]</c>.</param>
    /// <returns>The owning writer.</returns>
    /// <exception cref="ArgumentException"><paramref name="shape"/> has rank below 2 or a negative dimension.</exception>
    /// <exception cref="TensorFileException">The file could not be created.</exception>
    public static NumpySliceWriter Create(string path, IReadOnlyList<int> shape)
    {
        ArgumentNullException.ThrowIfNull(path);
        int[] dims = CheckShape(shape);
        long elements = dims.Aggregate(1L, (a, x) => checked(a * x));
        try
        {
            int offset;
            using (var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite))
            {
                offset = NumpyFile.WriteHeaderFloat32(stream, dims);
                stream.SetLength(offset + (elements * sizeof(float)));
            }

            SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
            return new NumpySliceWriter(path, handle, new NumpyFile.RowLayout(dims, ElementType.Float32, false, false, offset), owner: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(path);
            throw new TensorFileException(TensorFileErrorKind.Io, path, null, -1, ex.Message, ex);
        }
    }

    /// <summary>
    /// Opens for writing the file another writer <see cref="Create"/>d, checking that its header is float32 little-endian C order of
    /// <paramref name="shape"/> and that it has the full size. The writer returned does not own the file: disposing it only closes it.
    /// </summary>
    /// <param name="path">The file the owner created.</param>
    /// <param name="shape">The shape the owner gave.</param>
    /// <returns>A writer for some of the rows.</returns>
    /// <exception cref="ArgumentException"><paramref name="shape"/> has rank below 2 or a negative dimension.</exception>
    /// <exception cref="TensorFileException">The file is missing, or its header or size is not that of <paramref name="shape"/>.</exception>
    public static NumpySliceWriter Open(string path, IReadOnlyList<int> shape)
    {
        ArgumentNullException.ThrowIfNull(path);
        int[] dims = CheckShape(shape);
        var context = new FileContext(path, null);
        NumpyFile.RowLayout layout;
        using (FileStream stream = Files.OpenRead(path))
        {
            layout = NumpyFile.RowLayout.Of(stream, context);
        }

        if (layout.Type != ElementType.Float32 || layout.BigEndian || layout.FortranOrder || !layout.Shape.AsSpan().SequenceEqual(dims))
        {
            throw context.Error(TensorFileErrorKind.BadHeader, -1,
                $"holds {Payload.Name(layout.Type)} {TensorData.FormatShape(layout.Shape)}{(layout.BigEndian ? " big-endian" : "")}{(layout.FortranOrder ? " in Fortran order" : "")}; expected little-endian float32 {TensorData.FormatShape(dims)} in C order");
        }

        try
        {
            return new NumpySliceWriter(path, File.OpenHandle(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite), layout, owner: false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, null, -1, ex.Message, ex);
        }
    }

    /// <summary>
    /// Writes <paramref name="rows"/>, shaped <c>[..., localN, d]</c> as <see cref="NumpyFile.ReadRows"/> returns them, at the global
    /// row <paramref name="ranges"/> of every leading index.
    /// </summary>
    /// <param name="rows">The rows, for every leading index the ranges' rows one after another.</param>
    /// <param name="ranges">Global row ranges (start, count) within <c>[0, n]</c>.</param>
    /// <exception cref="ArgumentException"><paramref name="rows"/> has the wrong length, or a range lies outside the rows.</exception>
    /// <exception cref="ObjectDisposedException">The writer was committed, aborted or disposed.</exception>
    /// <exception cref="TensorFileException">A write failed (disk full, for instance).</exception>
    public void WriteRows(ReadOnlySpan<float> rows, IReadOnlyList<(long Start, long Count)> ranges)
    {
        ArgumentNullException.ThrowIfNull(ranges);
        SafeFileHandle handle = _handle ?? throw new ObjectDisposedException(nameof(NumpySliceWriter), $"{Path} is already committed or closed.");
        long local;
        try
        {
            local = _layout.CheckRanges(ranges, new FileContext(Path, null));
        }
        catch (TensorFileException ex)
        {
            throw new ArgumentException(ex.Detail, nameof(ranges), ex);
        }

        long expected = _layout.Lead * local * _layout.Width;
        if (rows.Length != expected)
        {
            throw new ArgumentException(
                $"rows holds {rows.Length} values; {_layout.Lead} leading indices x {local} rows x {_layout.Width} = {expected} were expected.", nameof(rows));
        }

        try
        {
            int at = 0;
            foreach ((long offset, long count) in _layout.Pieces(ranges))
            {
                RandomAccess.Write(handle, MemoryMarshal.AsBytes(rows.Slice(at, (int)count)), offset);
                at += (int)count;
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TensorFileException(TensorFileErrorKind.Io, Path, null, -1, ex.Message, ex);
        }
    }

    /// <summary>
    /// Closes the file and renames it to <paramref name="destination"/>. Only the owner commits, and only once every writer has
    /// written and closed its rows (the caller's barrier).
    /// </summary>
    /// <param name="destination">The final path, in the same file system (the same folder, for an atomic rename).</param>
    /// <param name="overwrite">Whether to replace an existing <paramref name="destination"/>.</param>
    /// <exception cref="InvalidOperationException">This writer does not own the file.</exception>
    /// <exception cref="ObjectDisposedException">The writer was already committed, aborted or disposed.</exception>
    /// <exception cref="IOException"><paramref name="destination"/> exists and <paramref name="overwrite"/> is false; the file is deleted.</exception>
    public void Commit(string destination, bool overwrite)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!_owner)
        {
            throw new InvalidOperationException($"{Path} is committed by the writer that created it.");
        }

        SafeFileHandle handle = _handle ?? throw new ObjectDisposedException(nameof(NumpySliceWriter), $"{Path} is already committed or closed.");
        _handle = null;
        handle.Dispose();
        try
        {
            File.Move(Path, destination, overwrite);
        }
        catch
        {
            TryDelete(Path);
            throw;
        }
    }

    /// <summary>Closes the file; the owner also deletes it. Nothing happens after a commit.</summary>
    public void Abort()
    {
        SafeFileHandle? handle = _handle;
        _handle = null;
        if (handle is null)
        {
            return;
        }

        handle.Dispose();
        if (_owner)
        {
            TryDelete(Path);
        }
    }

    /// <summary>Same as <see cref="Abort"/>: an owner disposed without a commit deletes its file.</summary>
    public void Dispose() => Abort();

    private static int[] CheckShape(IReadOnlyList<int> shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        int[] dims = [.. shape];
        if (dims.Length < 2 || dims.Any(x => x < 0))
        {
            throw new ArgumentException($"shape {TensorData.FormatShape(dims)} must be [..., n, d]: rank 2 or more, no negative dimension.", nameof(shape));
        }

        return dims;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // The original failure is the one to report.
        }
    }
}
