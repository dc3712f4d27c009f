using FastAttention.IO;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn convert IN --out OUT</c>: moves tensors between <c>.npy</c>, <c>.npz</c> and safetensors,
/// keeping every value exactly (float16 and bfloat16 widen to float32, integer and boolean types to int64).
/// </summary>
internal static class ConvertCommand
{
    public static Command Command { get; } = new(
        "convert",
        "convert tensors between .npy, .npz and .safetensors (values kept exactly; float16/bfloat16 become float32, integers int64)",
        [
            new("in", "IN", "the input (also accepted as a bare word): FILE.npy, FILE.npz, FILE.safetensors, or FILE.npz:NAME / FILE.safetensors:NAME for one tensor (required)"),
            new("out", "OUT", "the output; its extension picks the format: .npy (one tensor), .npz or .safetensors (required)"),
            new("name", "NAME", "the tensor's name in the output when the input is a .npy (default: the input file's name without extension)"),
            new("compress", null, ".npz output: deflate the entries (as numpy.savez_compressed)"),
            new("force", null, "overwrite OUT if it exists"),
            new("json", null, "print one JSON object listing the tensors written"),
        ],
        Run)
    {
        Positional = "in",
    };


    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        string input = o.Required("convert", "in");
        string output = o.Required("convert", "out");
        bool force = o.Flag("force");
        string outFormat = Path.GetExtension(output).ToLowerInvariant();
        TensorFiles.CheckTensorOutput(o, "out");
        (string path, string? only) = TensorFiles.Split(input);
        if (!File.Exists(path))
        {
            throw new TensorFileException(TensorFileErrorKind.Io, path, only, -1, "file not found (given as the input)");
        }

        Progress.Current.Step("reading " + input);
        string inFormat = Path.GetExtension(path).ToLowerInvariant();
        IReadOnlyDictionary<string, string>? metadata = null;
        List<KeyValuePair<string, TensorData>> tensors = inFormat switch
        {
            ".npz" => [.. NpzFile.ReadAll(path)],
            ".safetensors" => [.. SafeTensorsFile.ReadAll(path)],
            _ => [new(o.Get("name") ?? Path.GetFileNameWithoutExtension(path), NumpyFile.Read(path))],
        };
        if (inFormat == ".safetensors")
        {
            metadata = SafeTensorsFile.Metadata(path);
        }

        if (only is not null)
        {
            if (inFormat is not (".npz" or ".safetensors"))
            {
                throw new UsageException($"convert: '{path}' holds one array; the ':{only}' suffix is only for .npz and .safetensors");
            }

            tensors = [.. tensors.Where(t => t.Key == only)];
            if (tensors.Count == 0)
            {
                throw new TensorFileException(TensorFileErrorKind.TensorNotFound, path, only, -1, "no such tensor in the input");
            }
        }

        if (outFormat == ".npy" && tensors.Count != 1)
        {
            throw new UsageException($"convert: a .npy holds one array but {path} holds {tensors.Count} ({string.Join(", ", tensors.Select(t => t.Key))}); pick one as {path}:NAME or write .npz/.safetensors");
        }

        if (outFormat == ".npz" && tensors.FirstOrDefault(t => t.Key.Contains('/') || t.Key.Contains('\\')) is { Key: not null } bad)
        {
            // A name with a path separator would become a folder inside the zip; numpy.load would not find it under that name.
            throw new UsageException($"convert: tensor name '{bad.Key}' contains a path separator, which .npz cannot store as one array name; write .safetensors instead");
        }

        TensorFiles.WriteAtomically(output, force, temp =>
        {
            switch (outFormat)
            {
                case ".npz":
                    NpzFile.Write(temp, tensors, o.Flag("compress"));
                    break;
                case ".safetensors":
                    SafeTensorsFile.Write(temp, tensors, metadata);
                    break;
                default:
                    NumpyFile.Write(temp, tensors[0].Value);
                    break;
            }
        });

        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("input", input);
                w.WriteString("output", output);
                w.WriteStartArray("tensors");
                foreach ((string name, TensorData tensor) in tensors)
                {
                    w.WriteStartObject();
                    w.WriteString("name", name);
                    w.WriteString("dtype", tensor.ElementTypeName);
                    Json.WriteShape(w, "shape", tensor.Shape);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
            });
        }
        else
        {
            foreach ((string name, TensorData tensor) in tensors)
            {
                stdout.WriteLine($"{name}: {tensor.ElementTypeName} {tensor.ShapeText}");
            }

            stdout.WriteLine($"wrote {output} ({tensors.Count} tensor{(tensors.Count == 1 ? string.Empty : "s")})");
        }

        return ExitCode.Ok;
    }
}
