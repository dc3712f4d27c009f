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

    // Strict enums (a number is not an attention kind); NaN losses of a diverging run stay writable.
    private static readonly JsonSerializerOptions Json = new()
    {
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase, allowIntegerValues: false) },
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>What a checkpoint file holds: the run, its position, its tensors, the data's fingerprint and the thread count it was saved with.</summary>
    public sealed record Saved(TrainOptions Options, TrainState State, IReadOnlyDictionary<string, TensorData<float>> Tensors, string? Data, int? Threads);

    public static void Write(string path, TrainOptions options, TrainState state, string data, int threads, IEnumerable<(string Name, Tensor Value)> tensors)
    {
        ArgumentNullException.ThrowIfNull(path);
        var entries = tensors.Select(t =>
        {
            using var detached = t.Value.detach();
            using var cpu = detached.contiguous();
            return new KeyValuePair<string, TensorData>(t.Name, new TensorData<float>(cpu.data<float>().ToArray(), [.. cpu.shape.Select(s => (int)s)]));
        }).ToList();
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["options"] = JsonSerializer.Serialize(options, Json),
            ["state"] = JsonSerializer.Serialize(state, Json),
            ["data"] = data,
            ["threads"] = threads.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full) ?? ".", $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
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

            CheckState(state, options, path);
            // Every tensor is read before any model is built: the model the options describe must hold exactly the file's
            // parameters, so a doctored configuration cannot make us allocate more than the file holds.
            var tensors = SafeTensorsFile.ReadAllFloat32(path);
            long stored = tensors.Where(t => !t.Key.StartsWith("optimizer.", StringComparison.Ordinal)).Sum(t => t.Value.ElementCount);
            if (stored != options.Model.ParameterCount)
            {
                throw new InvalidDataException($"checkpoint {path}: holds {stored:N0} model parameters, but its model {options.Model} has {options.Model.ParameterCount:N0}");
            }

            int? threads = metadata.TryGetValue("threads", out string? t) && int.TryParse(t, System.Globalization.CultureInfo.InvariantCulture, out int n) ? n : null;
            return new Saved(options, state, tensors, metadata.GetValueOrDefault("data"), threads);
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

    private static void CheckState(TrainState state, TrainOptions options, string path)
    {
        if (state.History is null || state.Epoch < 0 || state.Epoch > options.Epochs || state.History.Count != state.Epoch || state.Batch < 0 || state.Step < 0
            || state.EpochSeen < 0 || state.EpochCorrect < 0 || state.EpochCorrect > state.EpochSeen)
        {
            throw new InvalidDataException($"checkpoint {path}: its position (epoch {state.Epoch} of {options.Epochs}, step {state.Batch}, {state.History?.Count ?? 0} finished epochs) is not one a run reaches");
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
