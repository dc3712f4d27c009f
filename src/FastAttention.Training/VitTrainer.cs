using System.Diagnostics;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>The training loss stopped being finite (the run diverged); the weights are those of the last finite step.</summary>
/// <param name="message">What happened, where, and what to try.</param>
public sealed class TrainingDivergedException(string message) : Exception(message);

/// <summary>How a call to <see cref="VitTrainer.Train"/> ended.</summary>
/// <param name="Completed">Every epoch ran; false when the run was cancelled between steps or stopped after the epochs a call asked for.</param>
/// <param name="State">Where the run is now (a checkpoint saved now resumes from here).</param>
public sealed record TrainResult(bool Completed, TrainState State)
{
    /// <summary>The run stopped because cancellation was requested (on a data-parallel run: on any rank; every rank stops at the same step).</summary>
    public bool Cancelled { get; init; }

    /// <summary>The test accuracy after the last finished epoch, or null before the first.</summary>
    public double? TestAccuracy => State.History.Count > 0 ? State.History[^1].TestAccuracy : null;
}

/// <summary>
/// Trains a <see cref="VisionTransformer"/> on MNIST's training split with AdamW and a warm-up then cosine schedule,
/// deterministically: for a fixed libtorch thread count the same options give the same bits, and a run saved by
/// <see cref="Save"/> and resumed by <see cref="Resume"/> continues bit for bit (the data order is a function of the seed
/// and epoch, random-key draws of the seed and step, and the checkpoint holds the weights and AdamW's moments).
/// Given an <see cref="IGradientReducer"/> it trains data-parallel (see VitTrainer.DataParallel.cs).
/// </summary>
public sealed partial class VitTrainer : IDisposable
{
    private readonly MnistData data;
    private readonly int[] train;
    private readonly int[] test;
    private readonly AdamW optimizer;

    private VitTrainer(MnistData data, TrainOptions options, VisionTransformer model, TrainState state, (int[] Train, int[] Test) split, IGradientReducer? reducer)
    {
        this.data = data;
        this.reducer = reducer is { Size: > 1 } ? reducer : null;
        Options = options;
        Model = model;
        State = state;
        (train, test) = split;
        optimizer = new AdamW(model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: options.WeightDecay) { Steps = state.Step };
        gradients = this.reducer is null ? null : new GradientBuffer(model.parameters(), StepScalars);
    }

    /// <summary>The run's options.</summary>
    public TrainOptions Options { get; }

    /// <summary>The model being trained.</summary>
    public VisionTransformer Model { get; }

    /// <summary>Where the run is.</summary>
    public TrainState State { get; private set; }

    /// <summary>The thread count the resumed checkpoint was saved with (null for a new run, or a checkpoint that does not say), for a notice when resuming with another.</summary>
    public int? SavedThreads { get; private init; }

    /// <summary>Steps per epoch.</summary>
    public int BatchesPerEpoch => (train.Length + Options.BatchSize - 1) / Options.BatchSize;

    /// <summary>The training images used.</summary>
    public int TrainCount => train.Length;

    /// <summary>The test images used.</summary>
    public int TestCount => test.Length;

    /// <summary>
    /// The threads this process trains with: libtorch's intra-op thread count and FastAttention's kernels'
    /// (<see cref="TorchRuntime.KernelThreads"/>). Results are bit-identical only at a fixed count.
    /// </summary>
    public static int Threads
    {
        get
        {
            TorchRuntime.EnsureLoaded();
            return get_num_threads();
        }

        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            TorchRuntime.EnsureLoaded();
            set_num_threads(value);
            TorchRuntime.KernelThreads = value;
        }
    }

    /// <summary>Starts a run: seeds torch's generator with the run's seed and builds the model.</summary>
    /// <param name="data">The digits.</param>
    /// <param name="options">The run.</param>
    /// <param name="initialWeights">Start from this model's weights instead of a fresh initialisation (fine-tuning); its shape must match.</param>
    /// <param name="reducer">Train data-parallel over these ranks (null or one rank: this process alone); every rank calls with the same options.</param>
    /// <returns>The trainer.</returns>
    /// <exception cref="ArgumentException">Options that cannot make a run (the message names the option), or a reducer whose rank is outside its size.</exception>
    public static VitTrainer Create(MnistData data, TrainOptions options, VisionTransformer? initialWeights = null, IGradientReducer? reducer = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ValidateReducer(reducer);
        if (initialWeights is not null && initialWeights.Config != options.Model)
        {
            throw new ArgumentException($"the initial weights are of model {initialWeights.Config}, the run's is {options.Model}", nameof(initialWeights));
        }

        var split = Split(data, options);
        TorchRuntime.EnsureLoaded();
        VisionTransformer model;
        // torch's generator is one per process: ranks that are threads of one process must not interleave seeding and drawing.
        lock (Seeding)
        {
            manual_seed(options.Seed);
            model = new VisionTransformer(options.Model, i => options.Attention.Create(i, options.Seed));
        }

        try
        {
            if (initialWeights is not null)
            {
                using var _ = no_grad();
                var source = initialWeights.state_dict();
                foreach (var (name, parameter) in model.named_parameters())
                {
                    parameter.copy_(source[name]);
                }
            }

            var trainer = new VitTrainer(data, options, model, new TrainState(0, 0, 0, []), split, reducer);
            trainer.TakeRankZeroWeights();
            return trainer;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Continues the run saved in a checkpoint, with its options, weights, optimizer moments and position.</summary>
    /// <param name="data">The digits (the same as the saved run's).</param>
    /// <param name="path">The checkpoint.</param>
    /// <param name="reducer">Continue data-parallel over these ranks (null or one rank: this process alone); every rank reads the same checkpoint.</param>
    /// <returns>The trainer.</returns>
    /// <exception cref="InvalidDataException">The checkpoint is unreadable, not a ViT run, or does not fit its own options (the message names the file).</exception>
    public static VitTrainer Resume(MnistData data, string path, IGradientReducer? reducer = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ValidateReducer(reducer);
        var saved = Checkpoint.Read(path);
        if (saved.Data is { } trainedOn && trainedOn != data.Fingerprint)
        {
            throw new InvalidDataException($"checkpoint {path}: the run was trained on other data ({trainedOn}) than {data.Source} ({data.Fingerprint}); resume with the same --data");
        }

        var split = Split(data, saved.Options);
        TorchRuntime.EnsureLoaded();
        var model = new VisionTransformer(saved.Options.Model, i => saved.Options.Attention.Create(i, saved.Options.Seed));
        VitTrainer? trainer = null;
        try
        {
            Checkpoint.Load(saved, model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), path);
            trainer = new VitTrainer(data, saved.Options, model, saved.State, split, reducer) { SavedThreads = saved.Threads };
            if (saved.State.Batch > trainer.BatchesPerEpoch)
            {
                throw new InvalidDataException($"checkpoint {path}: its position (step {saved.State.Batch} of the epoch) is past the epoch's {trainer.BatchesPerEpoch} steps");
            }

            Checkpoint.Load(saved, trainer.optimizer.Moments().Select(m => ("optimizer." + m.Name, m.Moment)), path);
            return trainer;
        }
        catch
        {
            if (trainer is not null)
            {
                trainer.Dispose();
            }
            else
            {
                model.Dispose();
            }

            throw;
        }
    }

    /// <summary>The learning rate of step <paramref name="step"/>: linear warm-up to the peak, then cosine decay to 0.</summary>
    /// <param name="step">The 0-based step.</param>
    /// <returns>The rate.</returns>
    public double LearningRate(long step)
    {
        long total = (long)Options.Epochs * BatchesPerEpoch;
        long warmup = Math.Max(1, (long)Math.Round(Options.WarmupFraction * total));
        if (step < warmup)
        {
            return Options.LearningRate * (step + 1) / warmup;
        }

        double progress = total > warmup ? (double)(step - warmup) / (total - warmup) : 1;
        return Options.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1, progress)));
    }

    /// <summary>Trains from <see cref="State"/> to the last epoch (or <paramref name="epochs"/> more), or until cancelled (checked between steps).</summary>
    /// <param name="progress">Receives a report after each step.</param>
    /// <param name="cancellationToken">Stops the run at the next step boundary; <see cref="State"/> then resumes exactly there.</param>
    /// <param name="epochs">Return after this many more epochs have finished (null: run to the last epoch); a caller that saves after every epoch passes 1.</param>
    /// <returns>How the call ended.</returns>
    public TrainResult Train(IProgress<TrainProgress>? progress = null, CancellationToken cancellationToken = default, int? epochs = null)
    {
        if (epochs is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(epochs), epochs, "epochs must be at least 1 (or null for all).");
        }

        int stopAt = epochs is { } more ? Math.Min(Options.Epochs, State.Epoch + more) : Options.Epochs;
        // A rank whose token is cancelled says so again at the next reduction; a fresh call with a fresh token trains on.
        stopAgreed = false;
        var clock = Stopwatch.StartNew();
        long sessionImages = 0;
        long sessionSteps = 0;
        long totalSteps = (long)Options.Epochs * BatchesPerEpoch;
        var epochClock = new Stopwatch();
        while (State.Epoch < stopAt)
        {
            int[] order = SplitMix.Shuffle(train, Options.Seed, State.Epoch);
            double lossSum = State.EpochLossSum, secondsBefore = State.EpochSeconds;
            long correct = State.EpochCorrect, seen = State.EpochSeen;
            epochClock.Reset();
            Model.train();
            while (State.Batch < BatchesPerEpoch)
            {
                if (StopRequested(cancellationToken))
                {
                    State = State with { EpochLossSum = lossSum, EpochCorrect = correct, EpochSeen = seen, EpochSeconds = secondsBefore + epochClock.Elapsed.TotalSeconds };
                    return new TrainResult(false, State) { Cancelled = true };
                }

                epochClock.Start();
                int start = State.Batch * Options.BatchSize;
                int count = Math.Min(Options.BatchSize, order.Length - start);
                var (loss, right) = Step(order.AsSpan(start, count), LearningRate(State.Step), cancellationToken);
                epochClock.Stop();
                lossSum += loss * count;
                correct += right;
                seen += count;
                sessionImages += count;
                sessionSteps++;
                State = State with { Batch = State.Batch + 1, Step = State.Step + 1 };
                double rate = sessionImages / clock.Elapsed.TotalSeconds;
                var remaining = TimeSpan.FromSeconds((totalSteps - State.Step) * clock.Elapsed.TotalSeconds / sessionSteps);
                progress?.Report(new TrainProgress(State.Epoch + 1, Options.Epochs, State.Batch, BatchesPerEpoch, lossSum / seen, (double)correct / seen, rate, remaining));
            }

            if (Evaluate(cancellationToken) is not double accuracy)
            {
                State = State with { EpochLossSum = lossSum, EpochCorrect = correct, EpochSeen = seen, EpochSeconds = secondsBefore + epochClock.Elapsed.TotalSeconds };
                return new TrainResult(false, State) { Cancelled = true };
            }

            double seconds = secondsBefore + epochClock.Elapsed.TotalSeconds;
            var record = new EpochRecord(State.Epoch + 1, lossSum / seen, (double)correct / seen, accuracy, seconds, seen / Math.Max(seconds, 1e-9));
            State = new TrainState(State.Epoch + 1, 0, State.Step, [.. State.History, record]);
        }

        return new TrainResult(State.Epoch == Options.Epochs, State);
    }

    /// <summary>The share of the test images the model classifies right, with its current attention (on a data-parallel run every rank must call it: the ranks split the images).</summary>
    /// <returns>The accuracy in [0, 1].</returns>
    public double Evaluate() => Evaluate(CancellationToken.None)!.Value;

    /// <summary>
    /// The share of test images classified right, or null when cancelled (checked between chunks of 250 images; on a
    /// data-parallel run rank r takes chunks r, r + P, ..., the same chunks one process makes, and the ranks agree on
    /// cancelling after the whole evaluation).
    /// </summary>
    private double? Evaluate(CancellationToken cancellationToken)
    {
        Model.eval();
        SetDraws(0, 0);
        long right = 0;
        const int chunk = 250;
        using var _ = no_grad();
        for (int start = (reducer?.Rank ?? 0) * chunk; start < test.Length; start += chunk * (reducer?.Size ?? 1))
        {
            if (reducer is null && cancellationToken.IsCancellationRequested)
            {
                return null;
            }

            using var scope = NewDisposeScope();
            var indices = test.AsSpan(start, Math.Min(chunk, test.Length - start));
            var (images, labels) = Batch(indices);
            right += Model.forward(images).argmax(1).eq(labels).sum().item<long>();
        }

        if (reducer is not null && SumEvaluation(ref right, cancellationToken))
        {
            return null;
        }

        return (double)right / test.Length;
    }

    /// <summary>The class logits of the first <paramref name="count"/> test images (in split order), with the current attention.</summary>
    /// <param name="count">How many test images (at most <see cref="TestCount"/>).</param>
    /// <returns>One row of 10 logits per image.</returns>
    public float[][] Logits(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, test.Length);
        Model.eval();
        SetDraws(0, 0);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (images, _) = Batch(test.AsSpan(0, count));
        var logits = Model.forward(images).data<float>().ToArray();
        return [.. Enumerable.Range(0, count).Select(i => logits[(i * MnistData.Classes)..((i + 1) * MnistData.Classes)])];
    }

    /// <summary>Writes the run (weights, AdamW moments, options, position, history) to a safetensors checkpoint; on a data-parallel run only rank 0 writes (every rank holds the same weights and moments).</summary>
    /// <param name="path">The file; written to a temporary file beside it, then renamed.</param>
    public void Save(string path)
    {
        if (reducer is { Rank: not 0 })
        {
            return;
        }

        Checkpoint.Write(path, Options, State, data.Fingerprint, Threads,
            [.. Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), .. optimizer.Moments().Select(m => ("optimizer." + m.Name, m.Moment))]);
    }

    /// <summary>Releases the model and the optimizer's moments.</summary>
    public void Dispose()
    {
        optimizer.Dispose();
        Model.Dispose();
    }

    /// <summary>The training and test images a run uses; throws before any model is built when either is empty.</summary>
    private static (int[] Train, int[] Test) Split(MnistData data, TrainOptions options)
    {
        int[] train = Spread(data.TrainIndices(), options.TrainLimit), test = Spread(data.TestIndices(), options.TestLimit);
        if (train.Length == 0 || test.Length == 0)
        {
            throw new ArgumentException($"data {data.Source}: {data.Count} images leave {train.Length} for training and {test.Length} for testing; both need at least one", nameof(data));
        }

        return (train, test);
    }

    /// <summary>
    /// The first <paramref name="limit"/> of <paramref name="indices"/> spread evenly over them (element <c>floor(i n / limit)</c>),
    /// so a limited run still sees every digit (the data is sorted by digit); all of them when there is no limit.
    /// </summary>
    private static int[] Spread(int[] indices, int? limit) =>
        limit is { } l && l < indices.Length ? [.. Enumerable.Range(0, l).Select(i => indices[(int)((long)i * indices.Length / l)])] : indices;

    private (double Loss, long Right) Step(ReadOnlySpan<int> indices, double learningRate, CancellationToken cancellationToken)
    {
        using var scope = NewDisposeScope();
        var (offset, count) = Slice(indices.Length);
        SetDraws(offset, reducer is null ? 0 : indices.Length, State.Step);
        Model.zero_grad();
        float value = 0;
        long right = 0;
        if (count > 0)
        {
            var (images, labels) = Batch(indices.Slice(offset, count));
            var logits = Model.forward(images);
            var loss = nn.functional.cross_entropy(logits, labels);
            if (reducer is not null)
            {
                // This rank's share of the global mean: summed over the ranks, the losses and gradients are one process's.
                loss = loss * ((float)count / indices.Length);
            }

            value = loss.item<float>();
            if (reducer is null && !float.IsFinite(value))
            {
                // Before the update: the weights stay those of the last good step (and the last checkpoint stays usable).
                throw Diverged(value);
            }

            loss.backward();
            using var _ = no_grad();
            right = logits.argmax(1).eq(labels).sum().item<long>();
        }

        if (reducer is not null)
        {
            (value, right) = SumStep(value, right, cancellationToken);
        }

        optimizer.Step(learningRate);
        return (value, right);
    }

    private TrainingDivergedException Diverged(float loss) =>
        new($"training diverged at epoch {State.Epoch + 1}, step {State.Batch + 1}: the loss is {loss}; try a lower learning rate (--lr)");

    private (Tensor Images, Tensor Labels) Batch(ReadOnlySpan<int> indices)
    {
        var pixels = new float[indices.Length * MnistData.Pixels];
        var labels = new long[indices.Length];
        for (int b = 0; b < indices.Length; b++)
        {
            data.Images.AsSpan(indices[b] * MnistData.Pixels, MnistData.Pixels).CopyTo(pixels.AsSpan(b * MnistData.Pixels));
            labels[b] = data.Labels[indices[b]];
        }

        return (tensor(pixels, [indices.Length, 1, MnistData.Side, MnistData.Side]), tensor(labels));
    }
}
