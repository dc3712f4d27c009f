namespace FastAttention.IO;

/// <summary>Opening and creating tensor files, with every I/O failure turned into a <see cref="TensorFileException"/>.</summary>
internal static class Files
{
    public static FileStream OpenRead(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, null, -1, ex.Message, ex);
        }
    }

    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
            write(stream);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, null, -1, ex.Message, ex);
        }
    }
}
