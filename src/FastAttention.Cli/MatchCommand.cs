using System.Globalization;
using FastAttention.Training;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn train match3</c> (and <c>match2</c>): one tensor head, or softmax heads and layers, trained on fresh Match3 (Match2)
/// sequences; progress while training, then the test accuracy on fresh sequences (or one JSON object ending with <c>testAccuracy</c>).
/// </summary>
internal static class MatchCommand
{
    /// <summary>The options only the match tasks take.</summary>
    public static OptionSpec[] Options { get; } =
    [
        new("heads", "H", "match3/match2: attention heads per layer (default 1)"),
        new("head-dim", "d", "match3/match2: each head's width (default 64)"),
        new("layers", "L", "match3/match2: attention layers (default 1)"),
        new("n", "N", "match3/match2: sequence length (default 32)"),
        new("m", "M", "match3/match2: the modulus (default: the smallest prime >= 2 N^2)"),
        new("steps", "S", "match3/match2: optimizer steps, each on a fresh batch (default: match3 2000, match2 400)"),
        new("frequencies", "F", "match3/match2: Fourier frequencies of the value embedding (default 32)"),
        new("curriculum", "N0", "match3/match2: start at length N0 and grow to N over the first half of the steps (default 8 for match3 at N > 16; N for none)"),
        new("causal", null, "match3/match2: the causal task (witnesses j <= i) with a causal model"),
        new("window", "W1,W2", "match3/match2: tensor attention with sliding windows (w1, w2); implies --causal and plants the witnesses within w1 and w2 positions"),
        new("weight-decay", "W", "match3/match2: AdamW's weight decay (default 0.01)"),
        new("scale", "S", "match3/match2: the attention's score scale (default 1/d for tensor, 1/sqrt(d) for softmax)"),
        new("test", "T", "match3/match2: fresh test sequences (default 512)"),
    ];

    /// <summary>Runs <c>train match3</c> or <c>train match2</c>.</summary>
    /// <param name="o">The parsed options.</param>
    /// <param name="stdout">Where results go.</param>
    /// <param name="kind">The task.</param>
    /// <returns>The exit code.</returns>
    public static int Run(ParsedOptions o, TextWriter stdout, MatchKind kind)
    {
        string[] vitOnly = ["top", "epochs", "train-limit", "checkpoint", "resume", "data", "force"];
        if (vitOnly.FirstOrDefault(name => o.Get(name) is not null || o.Flag(name)) is string given)
        {
            throw new UsageException($"train: --{given} applies to 'train vit', not to {kind.ToString().ToLowerInvariant()}");
        }

        var options = ReadOptions(o, kind);
        if (o.Threads() is int threads)
        {
            VitTrainer.Threads = threads;
        }

        bool json = o.Flag("json");
        using var trainer = new MatchTrainer(options);
        var model = options.Model;
        if (!json)
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"training {model} ({model.ParameterCount:N0} parameters) on {options.Task}, {options.Steps} steps of {options.BatchSize}, seed {options.Seed}, {VitTrainer.Threads} threads"));
        }

        var progress = Progress.Current;
        MatchResult result;
        try
        {
            result = trainer.Train(new Reporter(progress), progress.Cancellation);
        }
        catch (TrainingDivergedException e)
        {
            o.Notices.WriteLine($"fastattn: train: {e.Message}");
            return ExitCode.Failure;
        }

        if (!result.Completed)
        {
            o.Notices.WriteLine(string.Create(CultureInfo.InvariantCulture, $"fastattn: train: cancelled; test accuracy at the last evaluation {result.TestAccuracy:P2}"));
            return ExitCode.Cancelled;
        }

        if (json)
        {
            Json.Write(stdout, w =>
            {
                w.WriteString("task", kind.ToString().ToLowerInvariant());
                w.WriteNumber("n", options.Task.Length);
                w.WriteNumber("m", options.Task.Modulus);
                w.WriteBoolean("causal", options.Task.Causal);
                w.WriteString("attention", model.Attention == MatchAttention.Tensor ? "tensor" : "softmax");
                w.WriteNumber("heads", model.Heads);
                w.WriteNumber("headDim", model.HeadDim);
                w.WriteNumber("layers", model.Layers);
                w.WriteNumber("width", model.Width);
                w.WriteNumber("parameters", model.ParameterCount);
                w.WriteNumber("steps", options.Steps);
                w.WriteNumber("batch", options.BatchSize);
                w.WriteNumber("seed", options.Seed);
                w.WriteNumber("threads", VitTrainer.Threads);
                w.WriteNumber("trainSeconds", result.TrainSeconds);
                w.WriteStartArray("curve");
                foreach (var p in result.Curve)
                {
                    w.WriteStartObject();
                    w.WriteNumber("step", p.Step);
                    w.WriteNumber("length", p.Length);
                    if (double.IsFinite(p.Loss))
                    {
                        w.WriteNumber("loss", p.Loss);
                        w.WriteNumber("trainAccuracy", p.TrainAccuracy);
                    }

                    w.WriteNumber("testAccuracy", p.TestAccuracy);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
                w.WriteNumber("testSequences", options.TestSequences);
                w.WriteNumber("testAccuracy", result.TestAccuracy ?? 0);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"test accuracy {result.TestAccuracy:P2} on {options.TestSequences:N0} fresh sequences ({options.TestSequences * options.Task.Length:N0} positions); {result.TrainSeconds:F1} s of training"));
        }

        return ExitCode.Ok;
    }

    private static MatchOptions ReadOptions(ParsedOptions o, MatchKind kind)
    {
        var attentionName = o.Get("attention") ?? "tensor";
        var attention = attentionName switch
        {
            "tensor" => MatchAttention.Tensor,
            "softmax" => MatchAttention.Softmax,
            _ => throw new UsageException($"train: --attention {attentionName}: {kind.ToString().ToLowerInvariant()} takes tensor or softmax"),
        };
        (int, int)? window = null;
        if (o.Get("window") is string w)
        {
            var parts = w.Split(',');
            window = parts.Length == 2 && int.TryParse(parts[0], CultureInfo.InvariantCulture, out int w1) && int.TryParse(parts[1], CultureInfo.InvariantCulture, out int w2) && w1 >= 1 && w2 >= 1
                ? (w1, w2)
                : throw new UsageException($"train: --window {w}: expected two positive integers W1,W2");
            if (attention != MatchAttention.Tensor)
            {
                throw new UsageException("train: --window applies to --attention tensor");
            }
        }

        bool causal = o.Flag("causal") || window is not null;
        int n = o.Int("n", 1, MatchTask.MaxLength) ?? 32;
        int m = o.Int("m", 2, MatchTask.MaxModulus) ?? MatchTask.DefaultModulus(kind, n);
        var task = new MatchTask(kind, n, m, causal, kind == MatchKind.Match3 ? window?.Item1 : window is { } both ? Math.Min(both.Item1, both.Item2) : null, kind == MatchKind.Match3 ? window?.Item2 : null);
        var config = new MatchModelConfig(attention, HeadDim: o.Int("head-dim", 1, 1024) ?? 64, Heads: o.Int("heads", 1, 64) ?? 1, Layers: o.Int("layers", 1, 16) ?? 1,
            Frequencies: o.Int("frequencies", 1, 4096) ?? 32, Causal: causal, Window: window, Scale: o.Double("scale", positive: true));
        var defaults = MatchOptions.Recommended(task, config);
        int? steps = o.Int("steps", 1, 10_000_000);
        var options = defaults with
        {
            Steps = steps ?? defaults.Steps,
            BatchSize = o.Int("batch", 1, 1 << 16) ?? defaults.BatchSize,
            LearningRate = o.Double("lr", positive: true) ?? defaults.LearningRate,
            WeightDecay = o.Double("weight-decay") ?? defaults.WeightDecay,
            Seed = o.Int("seed", 0, int.MaxValue) ?? 0,
            TestSequences = o.Int("test", 1, 1 << 20) ?? defaults.TestSequences,
            CurriculumFrom = o.Get("curriculum") is null ? defaults.CurriculumFrom : o.Int("curriculum", 1, n) is int from && from < n ? from : null,
            EvalEvery = steps is int given ? Math.Max(1, given / 20) : defaults.EvalEvery,
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException("train: " + e.Message.Split(" (Parameter", 2)[0]);
        }

        return options;
    }

    /// <summary>Shows each step on the progress line.</summary>
    private sealed class Reporter(Progress progress) : IProgress<MatchProgress>
    {
        public void Report(MatchProgress value)
        {
            string test = value.TestAccuracy is { } t ? string.Create(CultureInfo.InvariantCulture, $" test {t:P1}") : string.Empty;
            progress.Show(string.Create(CultureInfo.InvariantCulture,
                $"step {value.Step}/{value.Steps} loss {value.Loss:F3} acc {value.TrainAccuracy:P1}{test} {value.StepsPerSecond:F1} steps/s, ETA {(int)value.Remaining.TotalMinutes}m{value.Remaining.Seconds:D2}s"),
                (double)value.Step / value.Steps);
        }
    }
}
