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

    /// <summary>
    /// Reads key or value tensor <paramref name="spec"/> (given as <c>--option</c>) into storage type <paramref name="type"/>:
    /// a float16 .npy or an F16/BF16 safetensors entry already in the type is taken as stored, anything else is converted
    /// (<see cref="NumpyFile.ReadKv"/>). Non-finite values are left to the attention call, which rejects them by default
    /// naming the tensor and the place (checking here would widen the whole tensor once more).
    /// </summary>
    public static KvTensorData LoadKv(string option, string spec, KvElementType type)
    {
        Progress.Current.Step($"reading --{option} {spec} as {KvElementTypes.Name(type)}");
        (string path, string? name) = Split(spec);
        if (!File.Exists(path))
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, name, -1, $"file not found (given as --{option})");
        }

        return Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".npz" => NpzFile.ReadKv(path, name ?? SingleName(NpzFile.Names(path), path, option), type),
            ".safetensors" => SafeTensorsFile.ReadKv(path, name ?? SingleName(SafeTensorsFile.Names(path), path, option), type),
            _ when name is not null => throw new UsageException($"--{option}: '{path}' holds one array; the ':{name}' suffix is only for .npz and .safetensors"),
            _ => NumpyFile.ReadKv(path, type),
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

    /// <summary>
    /// The checks on a tensor output named by option <paramref name="option"/> of <paramref name="o"/>, before any file
    /// is read: its extension names one of <paramref name="formats"/> (default: all <see cref="Formats"/>), it is no
    /// input of the same command (<see cref="RefuseInputs"/>), and <see cref="CheckWritable(string, string, bool)"/>.
    /// </summary>
    public static void CheckTensorOutput(ParsedOptions o, string option, params string[] formats)
    {
        string path = o.Get(option) ?? throw new UsageException($"--{option} is required");
        formats = formats.Length > 0 ? formats : Formats;
        if (!Directory.Exists(path) && !formats.Contains(Path.GetExtension(path).ToLowerInvariant()))
        {
            throw new UsageException($"--{option} {path}: the extension must be {(formats.Length == 1 ? formats[0] : "one of " + string.Join(", ", formats))} (it picks the format)");
        }

        RefuseInputs(o, option, path);
        CheckWritable(option, path, o.Flag("force"));
    }

    /// <summary>
    /// An output never replaces an input, not even with <c>--force</c>: a usage error when <paramref name="path"/> is
    /// the file another option of the command names (the same path, or the same file through a symbolic link in any
    /// part of either path). Writes go through a temp file and a rename, so a hard link to an input keeps the input.
    /// </summary>
    public static void RefuseInputs(ParsedOptions o, string option, string path)
    {
        string target = Canonical(path);
        foreach ((string name, string value) in o.Values)
        {
            string other = Split(value).Path;
            if (name != option && File.Exists(other) && string.Equals(Canonical(other), target, StringComparison.Ordinal))
            {
                throw new UsageException($"--{option} {path} is the file given as --{name}: an output never replaces an input (name another file)");
            }
        }
    }

    /// <summary>The absolute path with every symbolic link along it resolved (the parts that exist).</summary>
    private static string Canonical(string path)
    {
        string full = Path.GetFullPath(path);
        string root = Path.GetPathRoot(full) ?? string.Empty;
        string resolved = root;
        foreach (string part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            string next = Path.Combine(resolved, part);
            for (int hops = 0; hops < 40; hops++)
            {
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.LinkTarget is not string link)
                {
                    break;
                }

                next = Path.GetFullPath(link, Path.GetDirectoryName(next) ?? root);
            }

            resolved = next;
        }

        return resolved;
    }

    /// <summary>
    /// Refuses up front a folder as the output, and an existing output unless <paramref name="force"/> is set; the
    /// output's folder must exist.
    /// </summary>
    public static void CheckWritable(string option, string path, bool force)
    {
        if (Directory.Exists(path))
        {
            throw new UsageException($"--{option} {path} is a folder; name a file (inside it, for instance)");
        }

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

    /// <summary>Output folders a command created and has not filled yet (removed by <see cref="DeleteTempFilesInFlight"/> while empty).</summary>
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> FoldersInFlight = new();

    /// <summary>Marks <paramref name="folders"/> (created by the running command) as to be removed, while still empty, if the process must leave.</summary>
    public static void TrackCreatedFolders(IEnumerable<string> folders)
    {
        foreach (string folder in folders)
        {
            FoldersInFlight[folder] = 0;
        }
    }

    /// <summary>The command is done with <paramref name="folders"/>: they stay, whatever they hold.</summary>
    public static void UntrackCreatedFolders(IEnumerable<string> folders)
    {
        foreach (string folder in folders)
        {
            FoldersInFlight.TryRemove(folder, out _);
        }
    }

    /// <summary>Deletes the temp files of writes still in progress, then the created output folders left empty (the process is leaving after Ctrl-C).</summary>
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

        // Innermost first: a parent is empty only once its created children are gone.
        foreach (string folder in FoldersInFlight.Keys.OrderByDescending(f => f.Length))
        {
            try
            {
                if (Directory.Exists(folder) && !Directory.EnumerateFileSystemEntries(folder).Any())
                {
                    Directory.Delete(folder);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // Best effort on the way out.
            }
        }
    }

    /// <summary>A fresh temp file name beside <paramref name="path"/> (hidden, unique), for a write that renames it over the target.</summary>
    public static string TempBeside(string path)
    {
        string full = Path.GetFullPath(path);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
    }

    /// <summary>Marks <paramref name="temp"/> as written right now: deleted by <see cref="DeleteTempFilesInFlight"/> if the process must leave.</summary>
    public static void TrackTemp(string temp) => InFlight[temp] = 0;

    /// <summary>The write of <paramref name="temp"/> is over (renamed or deleted).</summary>
    public static void UntrackTemp(string temp) => InFlight.TryRemove(temp, out _);

    /// <summary>Writes via a temp file in the same folder, then renames over the target.</summary>
    public static void WriteAtomically(string path, bool force, Action<string> write)
    {
        Progress.Current.Show("writing " + Path.GetFileName(path));
        string full = Path.GetFullPath(path);
        string temp = TempBeside(path);
        TrackTemp(temp);
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

            UntrackTemp(temp);
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
