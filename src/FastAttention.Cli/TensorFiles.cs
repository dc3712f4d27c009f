using FastAttention.IO;

namespace FastAttention.Cli;

/// <summary>
/// How the CLI names tensors: <c>file.npy</c>, or <c>file.npz:name</c> / <c>file.safetensors:name</c>
/// for one tensor of a multi-tensor file. Outputs go through a temp file and a rename, so a failed run
/// never leaves a half-written output and never touches an existing file unless asked to.
/// </summary>
internal static class TensorFiles
{
    /// <summary>
    /// Reads tensor <paramref name="spec"/> given as <c>--option</c>. Unless <paramref name="nonFinite"/> says how
    /// the command treats NaN and infinities (null: it accepts them), a non-finite value is a bad-input error naming the
    /// option, the file, the value and its row and column, followed by <paramref name="nonFinite"/>.
    /// </summary>
    public static TensorData<float> Load(string option, string spec, string? nonFinite = "Every input must be finite.")
    {
        TensorData<float> tensor = LoadAny(option, spec);
        if (nonFinite is not null && FiniteCheck.Describe(tensor.Data, $"--{option} ({spec})", tensor.Shape) is string problem)
        {
            throw new BadInputException($"{problem}. {nonFinite}");
        }

        return tensor;
    }

    private static TensorData<float> LoadAny(string option, string spec)
    {
        Progress.Current.Step($"reading --{option} {spec}");
        (string path, string? name) = Split(spec);
        if (!File.Exists(path))
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, name, -1, $"file not found (given as --{option})");
        }

        string extension = Path.GetExtension(path).ToLowerInvariant();
        return extension switch
        {
            ".npz" => NpzFile.ReadFloat32(path, name ?? SingleName(NpzFile.Names(path), path, option)),
            ".safetensors" => SafeTensorsFile.ReadFloat32(path, name ?? SingleName(SafeTensorsFile.Names(path), path, option)),
            _ when name is not null => throw new UsageException($"--{option}: '{path}' holds one array; the ':{name}' suffix is only for .npz and .safetensors"),
            _ => NumpyFile.ReadFloat32(path),
        };
    }

    /// <summary>Creates output folder <paramref name="dir"/> (given as <c>--out</c> to <paramref name="command"/>) if missing; a failure is a usage error naming it.</summary>
    public static void CreateFolder(string command, string dir)
    {
        try
        {
            Directory.CreateDirectory(dir);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new UsageException($"{command}: --out {dir}: cannot create the folder ({ex.Message})");
        }
    }

    /// <summary>The tensor file formats, picked by extension.</summary>
    public static readonly string[] Formats = [".npy", ".npz", ".safetensors"];

    /// <summary><see cref="CheckWritable"/> for a tensor output, whose extension must name one of <paramref name="formats"/> (default: all <see cref="Formats"/>).</summary>
    public static void CheckTensorOutput(string option, string path, bool force, params string[] formats)
    {
        formats = formats.Length > 0 ? formats : Formats;
        if (!formats.Contains(Path.GetExtension(path).ToLowerInvariant()))
        {
            throw new UsageException($"--{option} {path}: the extension must be {(formats.Length == 1 ? formats[0] : "one of " + string.Join(", ", formats))} (it picks the format)");
        }

        CheckWritable(option, path, force);
    }

    /// <summary>Refuses up front to clobber an existing output unless <paramref name="force"/> is set.</summary>
    public static void CheckWritable(string option, string path, bool force)
    {
        if (File.Exists(path) && !force)
        {
            throw new UsageException($"--{option} {path} already exists; pass --force to overwrite it");
        }

        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            throw new UsageException($"--{option} {path}: folder {dir} does not exist");
        }
    }

    /// <summary>Temp files being written right now (deleted by <see cref="DeleteTempFilesInFlight"/> if the process must leave).</summary>
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> InFlight = new();

    /// <summary>Deletes the temp files of writes still in progress (the process is leaving after Ctrl-C).</summary>
    public static void DeleteTempFilesInFlight()
    {
        foreach (string temp in InFlight.Keys)
        {
            try
            {
                File.Delete(temp);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // Best effort on the way out.
            }
        }
    }

    /// <summary>Writes via a temp file in the same folder, then renames over the target.</summary>
    public static void WriteAtomically(string path, bool force, Action<string> write)
    {
        Progress.Current.Show("writing " + Path.GetFileName(path));
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        InFlight[temp] = 0;
        try
        {
            write(temp);
            File.Move(temp, full, overwrite: force);
        }
        catch (IOException ex) when (!force && File.Exists(full))
        {
            throw new UsageException($"{path} appeared while computing; pass --force to overwrite it ({ex.Message})");
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }

            InFlight.TryRemove(temp, out _);
        }
    }

    /// <summary>Writes one float32 array to <c>.npy</c>, <c>.npz</c> or <c>.safetensors</c> (name <c>out</c>) by extension.</summary>
    public static void Save(string path, bool force, TensorData<float> tensor) =>
        WriteAtomically(path, force, temp =>
        {
            switch (Path.GetExtension(path).ToLowerInvariant())
            {
                case ".npz":
                    NpzFile.Write(temp, [new("out", tensor)]);
                    break;
                case ".safetensors":
                    SafeTensorsFile.Write(temp, [new("out", tensor)]);
                    break;
                default:
                    NumpyFile.Write(temp, tensor);
                    break;
            }
        });

    /// <summary>Splits <c>FILE.npz:NAME</c> or <c>FILE.safetensors:NAME</c> into the path and the tensor name (null when absent).</summary>
    public static (string Path, string? Name) Split(string spec)
    {
        foreach (string extension in new[] { ".npz:", ".safetensors:" })
        {
            int at = spec.LastIndexOf(extension, StringComparison.OrdinalIgnoreCase);
            if (at > 0)
            {
                return (spec[..(at + extension.Length - 1)], spec[(at + extension.Length)..]);
            }
        }

        return (spec, null);
    }

    private static string SingleName(IReadOnlyList<string> names, string path, string option) => names.Count == 1
        ? names[0]
        : throw new UsageException($"--{option}: {path} holds {names.Count} tensors ({string.Join(", ", names)}); name one as {path}:NAME");
}
