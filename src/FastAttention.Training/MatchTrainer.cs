using System.Diagnostics;
using FastAttention.TorchSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>A Match3 / Match2 training run.</summary>
/// <param name="Task">The task (its N is the length trained and tested at).</param>
/// <param name="Model">The model's shape.</param>
/// <param name="Steps">Optimizer steps; each draws a fresh batch.</param>
/// <param name="BatchSize">Sequences per step.</param>
/// <param name="LearningRate">AdamW's peak rate (linear warm-up, then constant until the last <see cref="DecayFraction"/> of steps, which decay it linearly to 0).</param>
/// <param name="WeightDecay">AdamW's decoupled weight decay on the matrices.</param>
/// <param name="WarmupSteps">Steps of linear warm-up.</param>
/// <param name="DecayFraction">The final share of steps over which the rate falls to 0.</param>
/// <param name="Seed">Seeds the initialisation, the frequencies and the training stream; the test stream is another seed of it.</param>
/// <param name="TestSequences">Fresh sequences the test accuracy is measured on.</param>
/// <param name="EvalEvery">Steps between test evaluations for the curve (and at the end).</param>
/// <param name="CurriculumFrom">Start training at this length and grow it linearly to N over the first <see cref="CurriculumFraction"/> of steps (null: N throughout); the model has no positions, so one set of weights serves every length.</param>
/// <param name="CurriculumFraction">The share of steps the curriculum takes to reach N.</param>
public sealed record MatchOptions(
    MatchTask Task, MatchModelConfig Model, int Steps = 3000, int BatchSize = 64, double LearningRate = 0.01, double WeightDecay = 0.01,
    int WarmupSteps = 100, double DecayFraction = 0.2, long Seed = 0, int TestSequences = 512, int EvalEvery = 250,
    int? CurriculumFrom = null, double CurriculumFraction = 0.5)
{
    /// <summary>
    /// The recipe <c>fastattn train match3</c> defaults to and the experiment uses: Match3 trains 2,000 steps, with a length
    /// curriculum from 8 over the first half when N > 16 (at N = 32 it learned by step 750 with it and step 2,700 without);
    /// Match2 400 steps.
    /// </summary>
    /// <param name="task">The task.</param>
    /// <param name="model">The model.</param>
    /// <param name="seed">The seed.</param>
    /// <returns>The options.</returns>
    public static MatchOptions Recommended(MatchTask task, MatchModelConfig model, long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(task);
        int steps = task.Kind == MatchKind.Match2 ? 400 : 2000;
        return new MatchOptions(task, model, Steps: steps, Seed: seed, EvalEvery: Math.Max(50, steps / 20),
            CurriculumFrom: task.Kind == MatchKind.Match3 && task.Length > 16 ? 8 : null, TestSequences: task.Length >= 64 ? 256 : 512);
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the option that cannot make a run.</summary>
    public void Validate()
    {
        ArgumentNullException.ThrowIfNull(Task);
        Task.Validate();
        Model.Validate();
        if (Task.Causal != (Model.Causal || Model.Window is not null))
        {
            throw new ArgumentException(Task.Causal ? "the causal task needs a causal model." : "a causal model cannot see what the non-causal task's labels depend on.", nameof(Model));
        }

        Check(Steps >= 1, nameof(Steps), $"steps {Steps} must be at least 1");
        Check(BatchSize >= 1, nameof(BatchSize), $"batch {BatchSize} must be at least 1");
        Check(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), $"learning rate {LearningRate} must be positive and finite");
        Check(WeightDecay >= 0 && double.IsFinite(WeightDecay), nameof(WeightDecay), $"weight decay {WeightDecay} must be non-negative and finite");
        Check(WarmupSteps >= 0, nameof(WarmupSteps), $"warm-up {WarmupSteps} must be non-negative");
        Check(DecayFraction is >= 0 and <= 1, nameof(DecayFraction), $"decay fraction {DecayFraction} must be in [0, 1]");
        Check(TestSequences >= 1, nameof(TestSequences), $"test sequences {TestSequences} must be at least 1");
        Check(EvalEvery >= 1, nameof(EvalEvery), $"evaluation interval {EvalEvery} must be at least 1");
        Check(CurriculumFrom is null || (CurriculumFrom >= 1 && CurriculumFrom <= Task.Length), nameof(CurriculumFrom), $"curriculum start {CurriculumFrom} must be in 1..N ({Task.Length})");
        Check(CurriculumFraction is > 0 and <= 1, nameof(CurriculumFraction), $"curriculum fraction {CurriculumFraction} must be in (0, 1]");
    }

    private static void Check(bool ok, string name, string message)
    {
        if (!ok)
        {
            throw new ArgumentException(message + ".", name);
        }
    }
}

/// <summary>A point of a Match training curve.</summary>
/// <param name="Step">Steps taken.</param>
/// <param name="Length">The length trained at by then (it grows under a curriculum).</param>
/// <param name="Loss">The mean training loss since the previous point.</param>
/// <param name="TrainAccuracy">The per-position training accuracy since the previous point.</param>
/// <param name="TestAccuracy">The per-position accuracy on the fresh test sequences at length N.</param>
/// <param name="Seconds">Training seconds so far (evaluation excluded).</param>
public readonly record struct MatchPoint(int Step, int Length, double Loss, double TrainAccuracy, double TestAccuracy, double Seconds);

/// <summary>Progress after a training step.</summary>
/// <param name="Step">Steps taken.</param>
/// <param name="Steps">Steps in the run.</param>
/// <param name="Loss">The mean loss since the last curve point.</param>
/// <param name="TrainAccuracy">The training accuracy since the last curve point.</param>
/// <param name="TestAccuracy">The last measured test accuracy (null before the first).</param>
/// <param name="StepsPerSecond">Training speed so far.</param>
/// <param name="Remaining">The estimated time left.</param>
public readonly record struct MatchProgress(int Step, int Steps, double Loss, double TrainAccuracy, double? TestAccuracy, double StepsPerSecond, TimeSpan Remaining);

/// <summary>How a Match run ended.</summary>
/// <param name="Completed">Every step ran (false: cancelled between steps).</param>
/// <param name="Curve">Test accuracy every <see cref="MatchOptions.EvalEvery"/> steps and at the end.</param>
/// <param name="TrainSeconds">Training time, evaluation excluded.</param>
public sealed record MatchResult(bool Completed, IReadOnlyList<MatchPoint> Curve, double TrainSeconds)
{
    /// <summary>The final test accuracy (at the last point), or null when no point was reached.</summary>
    public double? TestAccuracy => Curve.Count > 0 ? Curve[^1].TestAccuracy : null;

    /// <summary>The best test accuracy on the curve.</summary>
    public double? BestTestAccuracy => Curve.Count > 0 ? Curve.Max(p => p.TestAccuracy) : null;

    /// <summary>The first step whose test accuracy reached <paramref name="accuracy"/>, or null.</summary>
    /// <param name="accuracy">The level.</param>
    /// <returns>The step.</returns>
    public int? StepReaching(double accuracy) => Curve.Where(p => p.Step > 0).FirstOrDefault(p => p.TestAccuracy >= accuracy) is { Step: > 0 } p ? p.Step : null;
}

/// <summary>
/// Trains a <see cref="MatchModel"/> on fresh Match3 / Match2 batches with AdamW and binary cross-entropy per position, and measures
/// per-position accuracy on fresh test sequences. Deterministic at a fixed thread count: batch <c>s</c> is sequences
/// <c>[s B, (s + 1) B)</c> of the training stream (seed), the test set sequences <c>[0, T)</c> of the test stream.
/// </summary>
public sealed class MatchTrainer : IDisposable
{
    /// <summary>Held for the process (see <see cref="MatchModel"/>'s note on Scalars).</summary>
    private static readonly Scalar Zero = 0.ToScalar();
    private readonly AdamW optimizer;
    private readonly (Tensor Values, Tensor Labels) test;

    /// <summary>Builds the model (seeding torch's generator with the run's seed) and draws the test set.</summary>
    /// <param name="options">The run.</param>
    /// <exception cref="ArgumentException">Options that cannot make a run (the message names the option).</exception>
    public MatchTrainer(MatchOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
        TorchRuntime.EnsureLoaded();
        manual_seed(options.Seed);
        Model = new MatchModel(options.Model, options.Task.Modulus, options.Seed);
        optimizer = new AdamW(Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: options.WeightDecay);
        test = Tensors(options.Task, TestStream(options.Seed), 0, options.TestSequences);
    }

    /// <summary>The run's options.</summary>
    public MatchOptions Options { get; }

    /// <summary>The model.</summary>
    public MatchModel Model { get; }

    /// <summary>The learning rate of 0-based step <paramref name="step"/>.</summary>
    /// <param name="step">The step.</param>
    /// <returns>The rate.</returns>
    public double LearningRate(int step)
    {
        if (step < Options.WarmupSteps)
        {
            return Options.LearningRate * (step + 1) / Options.WarmupSteps;
        }

        int decaySteps = (int)Math.Round(Options.DecayFraction * Options.Steps);
        int decayStart = Options.Steps - decaySteps;
        return step < decayStart || decaySteps == 0 ? Options.LearningRate : Options.LearningRate * (Options.Steps - step) / (double)decaySteps;
    }

    /// <summary>The length step <paramref name="step"/> trains at (N without a curriculum).</summary>
    /// <param name="step">The 0-based step.</param>
    /// <returns>The length.</returns>
    public int LengthAt(int step)
    {
        if (Options.CurriculumFrom is not { } from)
        {
            return Options.Task.Length;
        }

        double ramp = Math.Min(1, step / (Options.CurriculumFraction * Options.Steps));
        return (int)Math.Round(from + ramp * (Options.Task.Length - from));
    }

    /// <summary>Trains every step, or until cancelled (checked between steps).</summary>
    /// <param name="progress">Receives a report after each step.</param>
    /// <param name="cancellationToken">Stops at the next step boundary.</param>
    /// <returns>The curve.</returns>
    /// <exception cref="TrainingDivergedException">The loss stopped being finite.</exception>
    public MatchResult Train(IProgress<MatchProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var curve = new List<MatchPoint> { new(0, LengthAt(0), double.NaN, double.NaN, Evaluate(), 0) };
        var clock = new Stopwatch();
        double lossSum = 0;
        long right = 0, seen = 0;
        int steps = 0;
        for (int step = 0; step < Options.Steps; step++)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                return new MatchResult(false, curve, clock.Elapsed.TotalSeconds);
            }

            clock.Start();
            var task = Options.Task with { Length = LengthAt(step) };
            var (loss, correct) = Step(task, step);
            clock.Stop();
            steps++;
            lossSum += loss * task.Length * Options.BatchSize;
            right += correct;
            seen += (long)task.Length * Options.BatchSize;
            bool last = step + 1 == Options.Steps;
            if ((step + 1) % Options.EvalEvery == 0 || last)
            {
                curve.Add(new MatchPoint(step + 1, task.Length, lossSum / seen, (double)right / seen, Evaluate(), clock.Elapsed.TotalSeconds));
                (lossSum, right, seen) = (0, 0, 0);
            }

            double rate = steps / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            progress?.Report(new MatchProgress(step + 1, Options.Steps, seen > 0 ? lossSum / seen : curve[^1].Loss, seen > 0 ? (double)right / seen : curve[^1].TrainAccuracy,
                curve[^1].TestAccuracy, rate, TimeSpan.FromSeconds((Options.Steps - step - 1) / rate)));
        }

        return new MatchResult(true, curve, clock.Elapsed.TotalSeconds);
    }

    /// <summary>The per-position accuracy on the run's fresh test sequences.</summary>
    /// <returns>The accuracy in [0, 1].</returns>
    public double Evaluate()
    {
        Model.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        long right = 0;
        const int chunk = 128;
        for (int start = 0; start < Options.TestSequences; start += chunk)
        {
            long count = Math.Min(chunk, Options.TestSequences - start);
            var logits = Model.forward(test.Values.narrow(0, start, count));
            right += logits.gt(Zero).eq(test.Labels.narrow(0, start, count)).sum().item<long>();
        }

        return (double)right / ((long)Options.TestSequences * Options.Task.Length);
    }

    /// <summary>Releases the model, the optimizer's moments and the test set.</summary>
    public void Dispose()
    {
        optimizer.Dispose();
        test.Values.Dispose();
        test.Labels.Dispose();
        Model.Dispose();
    }

    /// <summary>The test stream's seed: another stream than the training one for the same run seed.</summary>
    internal static long TestStream(long seed) => unchecked(seed ^ 0x7E57_5EED_0000_0001L);

    private static (Tensor Values, Tensor Labels) Tensors(MatchTask task, long seed, long first, int count)
    {
        var (values, labels) = MatchData.Batch(task, seed, first, count);
        return (tensor(values.Select(v => (long)v).ToArray(), [count, task.Length]).DetachFromDisposeScope(),
            tensor(labels, [count, task.Length]).DetachFromDisposeScope());
    }

    private (double Loss, long Right) Step(MatchTask task, int step)
    {
        using var scope = NewDisposeScope();
        Model.train();
        var (values, labels) = Tensors(task, Options.Seed, (long)step * Options.BatchSize, Options.BatchSize);
        using var valuesScope = values;
        using var labelsScope = labels;
        var logits = Model.forward(values);
        var loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to_type(ScalarType.Float32));
        double value = loss.item<float>();
        if (!double.IsFinite(value))
        {
            throw new TrainingDivergedException($"training diverged at step {step + 1}: the loss is {value}; try a lower learning rate (--lr)");
        }

        Model.zero_grad();
        loss.backward();
        optimizer.Step(LearningRate(step));
        using var _ = no_grad();
        return (value, logits.gt(Zero).eq(labels).sum().item<long>());
    }
}
