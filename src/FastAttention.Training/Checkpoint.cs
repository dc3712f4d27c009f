using System.Text.Json;
using System.Text.Json.Serialization;
using FastAttention.IO;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>
/// ViT checkpoints as safetensors: the model's parameters under their PyTorch names (<c>blocks.0.attn.qkv.weight</c>, ...),
/// AdamW's moments as <c>optimizer.exp_avg.{name}</c> and <c>optimizer.exp_avg_sq.{name}</c>, all float32, and in
/// <c>__metadata__</c> the format (<c>fastattention-vit/1</c>), the run's options and its position, as JSON.
/// </summary>
internal static class Checkpoint
{
    public const string Format = "fastattention-vit/1";

    private static readonly JsonSerializerOptions Json = new() { Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) }, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    /// <summary>What a checkpoint file holds.</summary>
    public sealed record Saved(TrainOptions Options, TrainState State, IReadOnlyDictionary<string, TensorData<float>> Tensors);

    public static void Write(string path, TrainOptions options, TrainState state, IEnumerable<(string Name, Tensor Value)> tensors)
    {
        ArgumentNullException.ThrowIfNull(path);
        var entries = tensors.Select(t =>
        {
            using var cpu = t.Value.detach().contiguous();
            return new KeyValuePair<string, TensorData>(t.Name, new TensorData<float>(cpu.data<float>().ToArray(), [.. cpu.shape.Select(s => (int)s)]));
        }).ToList();
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["options"] = JsonSerializer.Serialize(options, Json),
            ["state"] = JsonSerializer.Serialize(state, Json),
        };
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full) ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            SafeTensorsFile.Write(temp, entries, metadata);
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    public static Saved Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"checkpoint {path}: no such file");
        }

        try
        {
            var metadata = SafeTensorsFile.Metadata(path);
            if (!metadata.TryGetValue("format", out string? format) || format != Format)
            {
                throw new InvalidDataException($"checkpoint {path}: not a FastAttention ViT checkpoint (metadata format is '{format ?? "missing"}', expected '{Format}')");
            }

            var options = Deserialize<TrainOptions>(metadata, "options", path);
            var state = Deserialize<TrainState>(metadata, "state", path);
            try
            {
                options.Validate();
            }
            catch (ArgumentException e)
            {
                throw new InvalidDataException($"checkpoint {path}: its options cannot make a run: {e.Message}", e);
            }

            return new Saved(options, state, SafeTensorsFile.ReadAllFloat32(path));
        }
        catch (TensorFileException e)
        {
            throw new InvalidDataException($"checkpoint {path}: {e.Message}", e);
        }
    }

    /// <summary>Copies the saved tensors into <paramref name="targets"/> by name, checking every name and shape first.</summary>
    public static void Load(Saved saved, IEnumerable<(string Name, Tensor Target)> targets, string path)
    {
        var list = targets.ToList();
        foreach (var (name, target) in list)
        {
            if (!saved.Tensors.TryGetValue(name, out var value))
            {
                throw new InvalidDataException($"checkpoint {path}: lacks tensor {name}");
            }

            var expected = target.shape.Select(s => (int)s).ToArray();
            if (!value.Shape.SequenceEqual(expected))
            {
                throw new InvalidDataException($"checkpoint {path}: tensor {name} has shape {value.ShapeText}, the model needs {TensorData.FormatShape(expected)}");
            }
        }

        using var _ = no_grad();
        foreach (var (name, target) in list)
        {
            var value = saved.Tensors[name];
            using var source = tensor(value.Data, [.. value.Shape.Select(s => (long)s)]);
            target.copy_(source);
        }
    }

    private static T Deserialize<T>(IReadOnlyDictionary<string, string> metadata, string key, string path)
    {
        if (!metadata.TryGetValue(key, out string? text))
        {
            throw new InvalidDataException($"checkpoint {path}: metadata lacks '{key}'");
        }

        try
        {
            return JsonSerializer.Deserialize<T>(text, Json) ?? throw new InvalidDataException($"checkpoint {path}: metadata '{key}' is null");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"checkpoint {path}: metadata '{key}' is not valid: {e.Message}", e);
        }
    }
}
