using System.IO.Compression;

namespace FastAttention.IO;

/// <summary>
/// NumPy <c>.npz</c> archives: a zip of <c>.npy</c> files, stored or deflated, as written by
/// <c>numpy.savez</c> and <c>numpy.savez_compressed</c>. Entries are read without trusting the sizes
/// the archive claims: data is converted in small chunks as it is decompressed.
/// </summary>
public static class NpzFile
{
    /// <summary>The names of the arrays in the archive (entry names without <c>.npy</c>), in archive order.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <returns>The names.</returns>
    public static IReadOnlyList<string> Names(string path)
    {
        using ZipArchive zip = Open(path);
        return [.. zip.Entries.Where(e => !e.FullName.EndsWith('/')).Select(e => ArrayName(e.FullName))];
    }

    /// <summary>Reads one array as float32.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <param name="name">The array name (with or without <c>.npy</c>).</param>
    /// <returns>The array.</returns>
    public static TensorData<float> ReadFloat32(string path, string name) => ReadOne<float>(path, name);

    /// <summary>Reads one integer array as int64.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <param name="name">The array name (with or without <c>.npy</c>).</param>
    /// <returns>The array.</returns>
    public static TensorData<long> ReadInt64(string path, string name) => ReadOne<long>(path, name);

    /// <summary>Reads one array as a key or value tensor in <paramref name="type"/>, as <see cref="NumpyFile.ReadKv"/> reads a <c>.npy</c> file.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <param name="name">The array name (with or without <c>.npy</c>).</param>
    /// <param name="type">The storage type wanted.</param>
    /// <returns>The tensor, its shape and the archive entry's element type.</returns>
    /// <exception cref="TensorFileException">As <see cref="NumpyFile.ReadKv"/>, or the archive has no such array.</exception>
    public static KvTensorData ReadKv(string path, string name, KvElementType type)
    {
        ArgumentNullException.ThrowIfNull(name);
        using ZipArchive zip = Open(path);
        ZipArchiveEntry entry = Find(zip, path, name);
        var context = new FileContext(path, ArrayName(entry.FullName));
        try
        {
            using Stream stream = entry.Open();
            return NumpyFile.ReadKvFrom(stream, null, context, type);
        }
        catch (Exception ex) when (ex is InvalidDataException or NotSupportedException)
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, -1, "corrupt or unsupported zip entry: " + ex.Message, ex);
        }
    }

    /// <summary>Reads every array as float32, keyed by name.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <returns>The arrays in archive order.</returns>
    public static IReadOnlyDictionary<string, TensorData<float>> ReadAllFloat32(string path)
    {
        using ZipArchive zip = Open(path);
        var result = new Dictionary<string, TensorData<float>>(StringComparer.Ordinal);
        foreach (ZipArchiveEntry entry in zip.Entries)
        {
            if (!entry.FullName.EndsWith('/'))
            {
                result[ArrayName(entry.FullName)] = ReadEntry<float>(path, entry);
            }
        }

        return result;
    }

    /// <summary>Reads every array keeping its values exactly (element types as <see cref="NumpyFile.Read(string)"/>), keyed by name.</summary>
    /// <param name="path">The <c>.npz</c> file.</param>
    /// <returns>The arrays in archive order.</returns>
    public static IReadOnlyList<KeyValuePair<string, TensorData>> ReadAll(string path)
    {
        using ZipArchive zip = Open(path);
        var result = new List<KeyValuePair<string, TensorData>>();
        foreach (ZipArchiveEntry entry in zip.Entries)
        {
            if (!entry.FullName.EndsWith('/'))
            {
                var context = new FileContext(path, ArrayName(entry.FullName));
                result.Add(new(context.TensorName!, ReadEntryWith(entry, context, stream => NumpyFile.ReadNaturalFrom(stream, null, context))));
            }
        }

        return result;
    }

    /// <summary>Writes arrays to a new archive (deflate-compressed entries <c>name.npy</c>).</summary>
    /// <param name="path">The file to create or replace.</param>
    /// <param name="arrays">Names and arrays.</param>
    /// <param name="compress">Deflate the entries (as <c>savez_compressed</c>) or store them (as <c>savez</c>).</param>
    public static void Write(string path, IEnumerable<KeyValuePair<string, TensorData>> arrays, bool compress = false)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(arrays);
        Files.Write(path, stream =>
        {
            using var zip = new ZipArchive(stream, ZipArchiveMode.Create);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach ((string name, TensorData tensor) in arrays)
            {
                if (string.IsNullOrEmpty(name) || !seen.Add(name))
                {
                    throw new ArgumentException($"Array name '{name}' is empty or repeated.", nameof(arrays));
                }

                ZipArchiveEntry entry = zip.CreateEntry(name + ".npy", compress ? CompressionLevel.Fastest : CompressionLevel.NoCompression);
                using Stream entryStream = entry.Open();
                NumpyFile.WriteTo(entryStream, tensor);
            }
        });
    }

    private static TensorData<T> ReadOne<T>(string path, string name)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(name);
        using ZipArchive zip = Open(path);
        return ReadEntry<T>(path, Find(zip, path, name));
    }

    private static ZipArchiveEntry Find(ZipArchive zip, string path, string name)
    {
        string wanted = ArrayName(name);
        ZipArchiveEntry? entry = zip.Entries.FirstOrDefault(e => ArrayName(e.FullName) == wanted);
        if (entry is null)
        {
            string names = string.Join(", ", zip.Entries.Select(e => ArrayName(e.FullName)));
            throw new TensorFileException(TensorFileErrorKind.TensorNotFound, path, wanted, -1, $"no such array; the archive holds: {names}");
        }

        return entry;
    }

    private static TensorData<T> ReadEntry<T>(string path, ZipArchiveEntry entry)
        where T : unmanaged
    {
        var context = new FileContext(path, ArrayName(entry.FullName));
        return (TensorData<T>)ReadEntryWith(entry, context, stream => NumpyFile.ReadFrom<T>(stream, null, context));
    }

    private static TensorData ReadEntryWith(ZipArchiveEntry entry, FileContext context, Func<Stream, TensorData> read)
    {
        try
        {
            using Stream stream = entry.Open();
            return read(stream);
        }
        catch (Exception ex) when (ex is InvalidDataException or NotSupportedException)
        {
            throw context.Error(TensorFileErrorKind.NotThisFormat, -1, "corrupt or unsupported zip entry: " + ex.Message, ex);
        }
    }

    private static ZipArchive Open(string path)
    {
        FileStream stream = Files.OpenRead(path);
        try
        {
            var zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
            _ = zip.Entries; // the central directory is parsed lazily: fail here, with the file named
            return zip;
        }
        catch (Exception ex) when (ex is InvalidDataException or IOException or ArgumentException)
        {
            stream.Dispose();
            throw new TensorFileException(TensorFileErrorKind.NotThisFormat, path, null, -1, "not a valid .npz (zip) archive: " + ex.Message, ex);
        }
    }

    private static string ArrayName(string entryName) =>
        entryName.EndsWith(".npy", StringComparison.Ordinal) ? entryName[..^4] : entryName;
}
