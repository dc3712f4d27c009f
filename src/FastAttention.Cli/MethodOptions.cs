using System.Numerics.Tensors;
using FastAttention.Lab;

namespace FastAttention.Cli;

/// <summary>
/// The command line's side of the lab's <see cref="MethodTable"/>: the <c>--method</c> help and its values, the
/// options that belong to other methods, and the <see cref="MethodSettings"/> a command's options give. <c>attend</c>,
/// <c>tensor</c> and <c>bench</c> read the table through it instead of keeping lists of their own.
/// </summary>
internal static class MethodOptions
{
    /// <summary>A method a command offers besides the table's (e.g. <c>auto</c>, the planner's choice), with the options it accepts.</summary>
    public sealed record Extra(string Name, string Summary, string[] Options);

    /// <summary>The <c>--method</c> option: every method's name and summary, in table order, then the extras; only those values.</summary>
    public static OptionSpec MethodOption(IEnumerable<(string Name, string Summary)> methods, string defaultName)
    {
        (string Name, string Summary)[] all = [.. methods];
        return new OptionSpec("method", "M", $"default {defaultName}. " + string.Join("; ", all.Select(m => $"{m.Name}: {m.Summary}")))
        {
            Values = [.. all.Select(m => m.Name)],
        };
    }

    /// <summary>For each option some of the methods accept, the methods that accept it (for "applies to --method ..." errors).</summary>
    public static (string Option, string[] Methods)[] OptionTable(IEnumerable<(string Name, IReadOnlyList<string> Options)> methods)
    {
        (string Name, IReadOnlyList<string> Options)[] all = [.. methods];
        return [.. all.SelectMany(m => m.Options).Distinct().Select(option => (option, all.Where(m => m.Options.Contains(option)).Select(m => m.Name).ToArray()))];
    }

    /// <summary>
    /// The settings every method reads from, parsed from the options and checked by the method's table entry
    /// (<see cref="MethodEntry.WhyNot"/>: --eps ranges, lev's one of --eps and --top) here, before any file is read.
    /// <paramref name="checkedBy"/>: the entry that will run (for attend's auto, the polynomial method, whose --eps it
    /// plans with). <paramref name="sketchSeed"/>: whether <c>--seed</c> is the sketch's (attend) or something else of the
    /// command's (bench draws its inputs from it).
    /// </summary>
    public static MethodSettings Settings(ParsedOptions o, string command, MethodEntry checkedBy, int threads, bool sketchSeed = true)
    {
        var settings = new MethodSettings
        {
            Scale = o.Float("scale"),
            Causal = o.Flag("causal"),
            Kernel = o.Kernel(command),
            Threads = threads,
            Eps = o.Double("eps", positive: true),
            Degree = o.Int("degree", 0, FastAttention.Polynomial.ExpPolynomial.MaxDegree),
            SketchSize = o.Int("sketch", 1, SketchedAttention.MaxSketchSize) ?? 0,
            Seed = sketchSeed ? o.Int("seed", 0, int.MaxValue) ?? 0 : 0,
            Top = o.Int("top", 1, int.MaxValue),
            KeepFirst = o.Int("keep-first", 0, int.MaxValue) ?? 0,
            KeepLast = o.Int("keep-last", 0, int.MaxValue) ?? 0,
            Power = o.Float("power", positive: true),
            AllowNonFinite = o.Flag("allow-nonfinite"),
        };
        return checkedBy.WhyNot(settings) is string reason ? throw new UsageException($"{command}: {reason}") : settings;
    }

    /// <summary>The <c>--kv-dtype</c> option of attend, bench and demo: keys and values stored as f32, f16, bf16 or q8 (only those values).</summary>
    public static OptionSpec KvDtypeOption(string help) =>
        new("kv-dtype", "T", help) { Values = [.. KvElementTypes.Names] };

    /// <summary><c>--kv-dtype</c>'s type, or null when it is not given (the float32 path of before, bits unchanged).</summary>
    public static KvElementType? KvType(ParsedOptions o, string command)
    {
        string? name = o.Get("kv-dtype");
        if (name is null)
        {
            return null;
        }

        return KvElementTypes.TryParse(name, out KvElementType type)
            ? type
            : throw new UsageException($"{command}: --kv-dtype '{name}' is not a storage type (one of {string.Join(", ", KvElementTypes.Names)})");
    }

    /// <summary>The exact method's library options from the settings (as the method table's exact entry sets them).</summary>
    public static ExactAttentionOptions ExactOptions(MethodSettings settings) => MethodTable.ExactOptions(settings);

    /// <summary>
    /// As <see cref="Warm"/> for exact attention on keys and values stored as <paramref name="type"/>: the typed kernel the
    /// timed call takes is compiled and its threads started on a small input first.
    /// </summary>
    public static void WarmKv(AttentionShape shape, MethodSettings settings, KvElementType type)
    {
        int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
        var warm = new AttentionShape(1, group, Math.Min(shape.QueryCount, 64), Math.Min(shape.KeyCount, 512), shape.HeadDim, shape.ValueDim, 1);
        var random = new Random(1);
        float[] Small(long count)
        {
            var values = new float[count];
            SeededGaussian.Fill(random, values);
            return values;
        }

        float[] q = Small(warm.QueryLength);
        KvTensor k = KvTensor.Encode(Small(warm.KeyLength), warm.HeadDim, type), v = KvTensor.Encode(Small(warm.ValueLength), warm.ValueDim, type);
        MethodSettings small = settings with { Causal = settings.Causal && warm.QueryCount <= warm.KeyCount };
        ExactAttention.Compute(q, k, v, warm, new float[warm.OutputLength], ExactOptions(small));
    }

    /// <summary>
    /// Runs the method once on a small input that takes the same code: the same heads per kv head, dimensions,
    /// settings and threads, up to 64 queries (up to 16 a head pick the decoding kernel, more the tiled one) and 512
    /// keys (more when lev keeps more; tensor methods: 128), small seeded values. The timed call then measures the computation, not the JIT
    /// compiling it or the worker threads starting (a one-token warm-up compiled the decoding kernel, not the tiled one).
    /// With <paramref name="backward"/>, it runs the entry's training forward and backward instead (with a small seeded dO).
    /// </summary>
    public static void Warm(MethodEntry entry, AttentionShape shape, MethodSettings settings, bool backward = false)
    {
        int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
        int keys = Math.Min(shape.KeyCount, entry.IsTensor ? 128 : Math.Max(512, (settings.Top ?? 0) + settings.KeepFirst + settings.KeepLast));
        var warm = new AttentionShape(1, group, Math.Min(shape.QueryCount, 64), keys, shape.HeadDim, shape.ValueDim, 1);
        var random = new Random(1);
        float[] Small(long count)
        {
            var values = new float[count];
            SeededGaussian.Fill(random, values);
            TensorPrimitives.Multiply(values, 0.01f, values); // small scores: any polynomial degree reaches them
            return values;
        }

        float[] q = Small(warm.QueryLength);
        MethodInputs inputs = entry.IsTensor
            ? new MethodInputs(q, [Small(warm.KeyLength), Small(warm.KeyLength)], [Small(warm.ValueLength), Small(warm.ValueLength)])
            : MethodInputs.Of(q, Small(warm.KeyLength), Small(warm.ValueLength));
        MethodSettings small = settings with { Causal = settings.Causal && warm.QueryCount <= warm.KeyCount };
        if (backward && entry.Backward is MethodBackward training)
        {
            training(inputs, warm, Small(warm.OutputLength), small);
        }
        else
        {
            entry.Forward(inputs, warm, new float[warm.OutputLength], small);
        }
    }
}
