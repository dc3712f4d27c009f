namespace FastAttention.Training;

/// <summary>What a ViT training run does; stored in its checkpoints so a resumed run continues the same run.</summary>
public sealed record TrainOptions
{
    /// <summary>The attention trained with.</summary>
    public AttentionChoice Attention { get; init; } = new(AttentionKind.Softmax);

    /// <summary>The model's shape.</summary>
    public VitConfig Model { get; init; } = VitConfig.Default;

    /// <summary>Passes over the training images.</summary>
    public int Epochs { get; init; } = 5;

    /// <summary>Images per step (the epoch's last step takes the remainder).</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>The peak learning rate, reached at the end of the warm-up.</summary>
    public double LearningRate { get; init; } = 3e-3;

    /// <summary>AdamW's decoupled weight decay.</summary>
    public double WeightDecay { get; init; } = 0.05;

    /// <summary>The share of all steps spent warming up linearly from 0; a cosine decay to 0 follows.</summary>
    public double WarmupFraction { get; init; } = 0.1;

    /// <summary>Seeds the initialisation, the data order and the random-key draws.</summary>
    public long Seed { get; init; }

    /// <summary>Train on only this many training images, spread evenly over the split (all when null): for quick runs.</summary>
    public int? TrainLimit { get; init; }

    /// <summary>Evaluate on only this many test images, spread evenly over the split (all when null).</summary>
    public int? TestLimit { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the option that cannot make a run.</summary>
    public void Validate()
    {
        Model.Validate();
        Check(Epochs >= 1, nameof(Epochs), $"epochs must be at least 1, not {Epochs}");
        Check(BatchSize >= 1, nameof(BatchSize), $"batch size must be at least 1, not {BatchSize}");
        Check(double.IsFinite(LearningRate) && LearningRate > 0, nameof(LearningRate), $"learning rate must be positive, not {LearningRate}");
        Check(double.IsFinite(WeightDecay) && WeightDecay >= 0, nameof(WeightDecay), $"weight decay must be 0 or more, not {WeightDecay}");
        Check(WarmupFraction is >= 0 and < 1, nameof(WarmupFraction), $"warm-up fraction must be in [0, 1), not {WarmupFraction}");
        Check(TrainLimit is null or >= 1, nameof(TrainLimit), $"train limit must be at least 1, not {TrainLimit}");
        Check(TestLimit is null or >= 1, nameof(TestLimit), $"test limit must be at least 1, not {TestLimit}");
        Check(Enum.IsDefined(Attention.Kind), nameof(Attention), $"attention kind {(int)Attention.Kind} is not one of {string.Join(", ", AttentionChoice.Names)}");
        Check(Attention.Top >= 1, nameof(Attention), $"top must be at least 1, not {Attention.Top}");
        Check(Attention.SketchSize is >= 1 and <= SketchedAttention.MaxSketchSize, nameof(Attention), $"sketch size must be in 1..{SketchedAttention.MaxSketchSize}, not {Attention.SketchSize}");
    }

    private static void Check(bool ok, string name, string message)
    {
        if (!ok)
        {
            throw new ArgumentException(message, name);
        }
    }
}

/// <summary>Where a run is: the next epoch and step within it, the steps taken, and the finished epochs.</summary>
/// <param name="Epoch">The epoch the next step belongs to (0-based); equals the epoch count when training is done.</param>
/// <param name="Batch">The next step within that epoch.</param>
/// <param name="Step">Optimizer steps taken so far.</param>
/// <param name="History">One record per finished epoch.</param>
/// <param name="EpochLossSum">The current epoch's summed training loss (times images) so far.</param>
/// <param name="EpochCorrect">The current epoch's rightly classified training images so far.</param>
/// <param name="EpochSeen">The current epoch's training images so far.</param>
/// <param name="EpochSeconds">The current epoch's training time so far.</param>
public sealed record TrainState(int Epoch, int Batch, long Step, IReadOnlyList<EpochRecord> History,
    double EpochLossSum = 0, long EpochCorrect = 0, long EpochSeen = 0, double EpochSeconds = 0);

/// <summary>One finished epoch.</summary>
/// <param name="Epoch">The epoch, 1-based.</param>
/// <param name="Loss">The mean training loss over the epoch's images.</param>
/// <param name="TrainAccuracy">The share of the epoch's training images classified right while training.</param>
/// <param name="TestAccuracy">The share of test images classified right after the epoch.</param>
/// <param name="Seconds">The epoch's training time (evaluation excluded).</param>
/// <param name="ImagesPerSecond">Training images per second over the epoch.</param>
public sealed record EpochRecord(int Epoch, double Loss, double TrainAccuracy, double TestAccuracy, double Seconds, double ImagesPerSecond);

/// <summary>A progress report, after each step.</summary>
/// <param name="Epoch">The current epoch, 1-based.</param>
/// <param name="Epochs">All epochs.</param>
/// <param name="Batch">Steps done in this epoch.</param>
/// <param name="Batches">Steps per epoch.</param>
/// <param name="Loss">The epoch's mean training loss so far.</param>
/// <param name="Accuracy">The epoch's training accuracy so far.</param>
/// <param name="ImagesPerSecond">Training images per second in this session.</param>
/// <param name="Remaining">The estimated time to the end of the run, from this session's pace.</param>
public readonly record struct TrainProgress(int Epoch, int Epochs, int Batch, int Batches, double Loss, double Accuracy, double ImagesPerSecond, TimeSpan? Remaining);
