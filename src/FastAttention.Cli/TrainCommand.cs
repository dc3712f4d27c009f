using System.Globalization;
using System.Text.Json;
using FastAttention.Training;

namespace FastAttention.Cli;

/// <summary>
/// <c>fastattn train vit</c> and <c>fastattn eval vit</c>: a ViT on the embedded MNIST digits (or <c>--data</c>) with any of
/// the attention kinds, checkpointed to safetensors; Ctrl-C saves the checkpoint and exits 130; <c>--resume</c> continues a
/// checkpoint bit for bit (at the same thread count).
/// </summary>
internal static class TrainCommand
{
    private static readonly OptionSpec Model = new("model", "vit", "the model to train (vit: a ViT on 28x28 digits, 2x2 patches = 197 tokens; match3 or match2: one layer of tensor or softmax attention on the Match3 / Match2 task)") { Values = ["vit", "match3", "match2"] };
    private static readonly OptionSpec Attention = new("attention", "A", "the attention: softmax (default for vit), lev (top-k keys by leverage score), random (k random keys), norm (k largest-norm keys), sketch (sketched polynomial), torch (TorchSharp's own SDPA); tensor (default for match3) or softmax for match3/match2") { Values = [.. AttentionChoice.Names, "tensor"] };
    private static readonly OptionSpec Top = new("top", "K", "keys each query keeps besides the CLS token, for lev, random and norm (default 32)");
    private static readonly OptionSpec Data = new("data", "F.npz", "digits to use instead of the embedded 10,000: an .npz with images [n, 28, 28] (0..255) and labels [n]; image i is a test image when i mod 5 == 4");
    private static readonly OptionSpec Threads = new("threads", "T", "libtorch and kernel threads (default: all cores); results are bit-identical at a fixed count");
    private static readonly OptionSpec JsonFlag = new("json", null, "no progress; print one JSON object (ending with testAccuracy)");

    public static Command Train { get; } = new(
        "train",
        "train a model: vit on MNIST digits with softmax, LevAttention, random, norm or sketched attention (safetensors checkpoints, Ctrl-C saves, --resume continues); match3 / match2 with tensor or softmax attention on fresh sequences",
        [
            Model, Attention, Top,
            new("epochs", "E", "passes over the 8,000 training images (default 5)"),
            new("seed", "S", "seeds the initialisation, data order and random draws (default 0)"),
            new("batch", "B", "images per step (default 64)"),
            new("lr", "R", "peak learning rate of the warm-up + cosine schedule (default 0.003)"),
            new("train-limit", "N", "train on N training images spread over the split (quick runs)"),
            new("checkpoint", "F.safetensors", "where to save the run: after every epoch, at the end and on Ctrl-C (default vit-ATTENTION-seedS.safetensors)"),
            new("resume", "F.safetensors", "continue the run saved in F (its options, weights, optimizer and position); needs --checkpoint naming another file"),
            Data, Threads,
            new("force", null, "overwrite an existing --checkpoint"),
            new("distributed", null, "vit data-parallel over the processes of 'mpiexec -n P fastattn train vit --distributed ...': each takes 1/P of every batch, gradients are summed every step, rank 0 prints and saves; without mpiexec, one process"),
            JsonFlag,
            .. MatchCommand.Options,
        ],
        RunTrain)
    { Positional = "model" };

    public static Command Eval { get; } = new(
        "eval",
        "evaluate a trained model's checkpoint on the test digits, with any attention swapped in",
        [
            Model,
            new("checkpoint", "F.safetensors", "the checkpoint to evaluate (required)"),
            Attention, Top, Data, Threads, JsonFlag,
        ],
        RunEval)
    { Positional = "model" };

    private static int RunTrain(ParsedOptions o, TextWriter stdout)
    {
        if (o.Get("model") is "match3" or "match2")
        {
            if (o.Flag("distributed"))
            {
                throw new UsageException($"train: --distributed applies to 'train vit', not to {o.Get("model")}");
            }

            return MatchCommand.Run(o, stdout, o.Get("model") == "match3" ? MatchKind.Match3 : MatchKind.Match2);
        }

        RequireVit(o, "train");
        if (MatchCommand.Options.FirstOrDefault(spec => o.Get(spec.Name) is not null || o.Flag(spec.Name)) is { } matchOnly)
        {
            throw new UsageException($"train: --{matchOnly.Name} applies to 'train match3' and 'train match2', not to vit");
        }

        return o.Flag("distributed") ? TrainRanks.Run((output, ranks) => TrainVit(o, output, ranks), stdout) : TrainVit(o, stdout, TrainRanks.Alone);
    }

    private static int TrainVit(ParsedOptions o, TextWriter stdout, TrainRanks ranks)
    {
        // Rank 0 speaks for the run; the other ranks' notices would repeat its lines.
        TextWriter notices = ranks.Rank == 0 ? o.Notices : TextWriter.Null;
        string? resume = o.Get("resume");
        string[] runOptions = ["attention", "top", "epochs", "seed", "batch", "lr", "train-limit"];
        if (resume is not null && runOptions.FirstOrDefault(name => o.Get(name) is not null) is string given)
        {
            throw new UsageException($"train: --{given} comes from the checkpoint when resuming; drop it (a resumed run continues the saved run exactly)");
        }

        TrainOptions? options = resume is null ? ReadOptions(o) : null;
        string checkpoint = o.Get("checkpoint")
            ?? (resume is null ? $"vit-{options!.Attention.Name}-seed{options.Seed}.safetensors" : throw new UsageException("train: --resume needs --checkpoint F.safetensors, another file to save the continued run to (the resumed checkpoint is never overwritten)"));
        if (!checkpoint.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"train: --checkpoint {checkpoint}: the extension must be .safetensors");
        }

        TensorFiles.RefuseInputs(o, "checkpoint", checkpoint);
        var (data, resumed) = ranks.Together(
            () =>
            {
                if (ranks.Rank == 0)
                {
                    TensorFiles.CheckWritable("checkpoint", checkpoint, o.Flag("force"));
                }

                SetThreads(o, ranks);
                MnistData digits = LoadData(o);
                return (digits, resume is null ? null : Resume(digits, resume, ranks.Reducer));
            },
            made => made.Item2?.Dispose());
        ranks.RequireSameData(data);
        using VitTrainer trainer = resumed ?? VitTrainer.Create(data, options!, reducer: ranks.Reducer);
        if (trainer.SavedThreads is int saved && saved != VitTrainer.Threads)
        {
            notices.WriteLine($"fastattn: train: {resume} was saved by a run on {saved} threads and this one has {VitTrainer.Threads}: libtorch's results differ between thread counts, so the continued run is not bit-identical to an uninterrupted one (pass --threads {saved})");
        }

        bool json = o.Flag("json");
        if (!json)
        {
            stdout.WriteLine($"training ViT {trainer.Options.Model} with {trainer.Options.Attention} attention on {trainer.TrainCount:N0} images, {trainer.Options.Epochs} epochs, seed {trainer.Options.Seed}, {VitTrainer.Threads} threads{ranks.Description}"
                + (resume is null ? string.Empty : $" (resumed at epoch {trainer.State.Epoch + 1}, step {trainer.State.Batch} of {trainer.BatchesPerEpoch})"));
        }

        // Under mpiexec every rank's output is a pipe, so no rank draws a progress line.
        var progress = Progress.Current;
        int reported = trainer.State.History.Count;
        TrainResult result;
        // Training stops at its own step boundaries after Ctrl-C and then saves: the tool must not leave before that.
        Program.HoldExitAfterCtrlC = true;
        try
        {
            while (true)
            {
                // One epoch per call, so every finished epoch is saved (and printed) before the next starts.
                try
                {
                    result = trainer.Train(new Reporter(progress), progress.Cancellation, epochs: 1);
                }
                catch (TrainingDivergedException e)
                {
                    notices.WriteLine($"fastattn: train: {e.Message}; {checkpoint} holds the run as of the last finished epoch");
                    return ExitCode.Failure;
                }

                progress.Show("saving " + Path.GetFileName(checkpoint));
                ranks.Together(() =>
                {
                    trainer.Save(checkpoint);
                    return true;
                });
                for (; reported < result.State.History.Count; reported++)
                {
                    var e = result.State.History[reported];
                    if (!json)
                    {
                        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"epoch {e.Epoch}/{trainer.Options.Epochs}: loss {e.Loss:F4}, train accuracy {e.TrainAccuracy:P2}, test accuracy {e.TestAccuracy:P2}, {e.ImagesPerSecond:F0} images/s, {e.Seconds:F1} s"));
                    }
                }

                // Ranks see Ctrl-C at different moments: they stop where the trainer agreed to (result.Cancelled), not where each saw it.
                if (result.Completed || result.Cancelled || (ranks.Size == 1 && progress.Cancellation.IsCancellationRequested))
                {
                    break;
                }
            }
        }
        finally
        {
            Program.HoldExitAfterCtrlC = false;
        }

        if (!result.Completed)
        {
            notices.WriteLine($"fastattn: train: cancelled at epoch {result.State.Epoch + 1}, step {result.State.Batch}; saved to {checkpoint} (continue with --resume {checkpoint} --checkpoint OTHER.safetensors)");
            return ExitCode.Cancelled;
        }

        if (json)
        {
            Json.Write(stdout, w =>
            {
                WriteRun(w, trainer, checkpoint);
                w.WriteNumber("ranks", ranks.Size);
                w.WriteStartArray("history");
                foreach (var e in result.State.History)
                {
                    w.WriteStartObject();
                    w.WriteNumber("epoch", e.Epoch);
                    Number(w, "loss", e.Loss);
                    w.WriteNumber("trainAccuracy", e.TrainAccuracy);
                    w.WriteNumber("testAccuracy", e.TestAccuracy);
                    w.WriteNumber("seconds", e.Seconds);
                    w.WriteNumber("imagesPerSecond", e.ImagesPerSecond);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
                Number(w, "testAccuracy", result.TestAccuracy ?? double.NaN);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"test accuracy {result.TestAccuracy:P2} on {trainer.TestCount:N0} images; saved to {checkpoint}"));
        }

        return ExitCode.Ok;
    }

    private static int RunEval(ParsedOptions o, TextWriter stdout)
    {
        RequireVit(o, "eval");
        string checkpoint = o.Required("eval", "checkpoint");
        AttentionChoice? swap = o.Get("attention") is string name ? AttentionChoice.Parse(name, o.Int("top", 1, 1 << 20) ?? 32) : null;
        if (o.Get("top") is not null && swap?.Kind is not (AttentionKind.Lev or AttentionKind.Random or AttentionKind.Norm))
        {
            throw new UsageException("eval: --top applies with --attention lev, random or norm");
        }

        SetThreads(o, TrainRanks.Alone);
        MnistData data = LoadData(o);
        using VitTrainer trainer = Resume(data, checkpoint, null);
        var attention = swap ?? trainer.Options.Attention;
        if (swap is { } s)
        {
            trainer.Model.SetAttention(i => s.Create(i, trainer.Options.Seed));
        }

        Progress.Current.Step($"evaluating {trainer.TestCount:N0} test images with {attention} attention");
        double accuracy = trainer.Evaluate();
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                WriteRun(w, trainer, checkpoint);
                w.WriteString("evaluatedWith", attention.ToString());
                w.WriteNumber("testImages", trainer.TestCount);
                w.WriteNumber("testAccuracy", accuracy);
            });
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"test accuracy {accuracy:P2} on {trainer.TestCount:N0} images with {attention} attention (trained with {trainer.Options.Attention}, {trainer.State.History.Count} of {trainer.Options.Epochs} epochs)"));
        }

        return ExitCode.Ok;
    }

    private static void RequireVit(ParsedOptions o, string command)
    {
        if (o.Get("model") is not "vit")
        {
            throw new UsageException($"{command}: name the model: 'fastattn {command} vit' (the only model with checkpoints)");
        }
    }

    private static TrainOptions ReadOptions(ParsedOptions o)
    {
        var attention = AttentionChoice.Parse(o.Get("attention") ?? "softmax", o.Int("top", 1, 1 << 20) ?? 32);
        if (o.Get("top") is not null && attention.Kind is not (AttentionKind.Lev or AttentionKind.Random or AttentionKind.Norm))
        {
            throw new UsageException($"train: --top applies to --attention lev, random or norm, not {attention.Name}");
        }

        var defaults = new TrainOptions();
        var options = new TrainOptions
        {
            Attention = attention,
            Epochs = o.Int("epochs", 1, 10_000) ?? defaults.Epochs,
            Seed = o.Int("seed", 0, int.MaxValue) ?? 0,
            BatchSize = o.Int("batch", 1, 1 << 16) ?? defaults.BatchSize,
            LearningRate = o.Double("lr", positive: true) ?? defaults.LearningRate,
            TrainLimit = o.Int("train-limit", 1, int.MaxValue),
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

    private static void SetThreads(ParsedOptions o, TrainRanks ranks)
    {
        if ((o.Threads() ?? (ranks.Size > 1 ? ranks.DefaultThreads() : null)) is int threads)
        {
            VitTrainer.Threads = threads;
        }
    }

    private static MnistData LoadData(ParsedOptions o)
    {
        Progress.Current.Step("loading digits");
        try
        {
            return o.Get("data") is string path ? MnistData.Load(path) : MnistData.LoadEmbedded();
        }
        catch (InvalidDataException e)
        {
            throw new BadInputException(e.Message);
        }
    }

    private static VitTrainer Resume(MnistData data, string checkpoint, IGradientReducer? reducer)
    {
        Progress.Current.Step("reading " + Path.GetFileName(checkpoint));
        try
        {
            return VitTrainer.Resume(data, checkpoint, reducer);
        }
        catch (InvalidDataException e)
        {
            throw new BadInputException(e.Message);
        }
    }

    /// <summary>A number, or null when it is not finite (JSON has no NaN).</summary>
    private static void Number(Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value))
        {
            w.WriteNumber(name, value);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    private static void WriteRun(Utf8JsonWriter w, VitTrainer trainer, string checkpoint)
    {
        var options = trainer.Options;
        w.WriteString("model", "vit");
        w.WriteString("checkpoint", checkpoint);
        w.WriteString("attention", options.Attention.Name);
        w.WriteNumber("top", options.Attention.Top);
        w.WriteNumber("epochs", options.Epochs);
        w.WriteNumber("seed", options.Seed);
        w.WriteNumber("threads", VitTrainer.Threads);
        w.WriteNumber("tokens", options.Model.Tokens);
        w.WriteNumber("trainImages", trainer.TrainCount);
    }

    /// <summary>Shows each step on the progress line.</summary>
    private sealed class Reporter(Progress progress) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value)
        {
            string eta = value.Remaining is { } r ? $", ETA {(int)r.TotalMinutes}m{r.Seconds:D2}s" : string.Empty;
            progress.Show(string.Create(CultureInfo.InvariantCulture,
                $"epoch {value.Epoch}/{value.Epochs} step {value.Batch}/{value.Batches} loss {value.Loss:F3} acc {value.Accuracy:P1} {value.ImagesPerSecond:F0} img/s{eta}"),
                ((value.Epoch - 1) * (double)value.Batches + value.Batch) / ((double)value.Epochs * value.Batches));
        }
    }
}
