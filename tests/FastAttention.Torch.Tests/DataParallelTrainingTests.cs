using System.Runtime.InteropServices;
using FastAttention.Distributed;
using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// Data-parallel ViT training with ranks as threads (<see cref="LocalCommunicator"/>): after every step every rank holds
/// the same bits, and the run follows one process training the same global batches.
/// </summary>
public sealed class DataParallelTrainingTests(ITestOutputHelper output)
{
    /// <summary>
    /// Loss curves of P ranks against one process. The ranks sum the same per-image gradients in another order (each
    /// slice's mean, weighted by slice / B, then a rank-order sum) and libtorch blocks a smaller batch's products
    /// differently, so each step's gradient differs by float rounding, and AdamW (which divides by sqrt(v)) carries
    /// that into the weights. Observed over 10 steps (P = 2, 3, 4; softmax and random keys): the running mean loss
    /// within 2.4e-7 (one float32 ulp of a loss near 2.3); asserted: 1e-5, 40 ulps.
    /// </summary>
    private const double LossTolerance = 1e-5;

    /// <summary>The ranks' weights against one process's after the run: observed within 4e-5, asserted 5e-4 (the weights are ~0.02 to 1).</summary>
    private const float WeightTolerance = 5e-4f;

    private static readonly Lazy<MnistData> Digits = new(MnistData.LoadEmbedded);

    /// <summary>
    /// 42 images in batches of 10: four steps of 10 and one of 2 per epoch, so no P in 2..4 divides every batch and
    /// P = 3 and 4 leave a rank without an image in the last step; 600 test images are three evaluation chunks (250, 250, 100),
    /// so P = 4 leaves a rank without a chunk.
    /// </summary>
    private static TrainOptions Tiny(AttentionKind kind) => new()
    {
        Attention = new AttentionChoice(kind, Top: 8, SketchSize: 8),
        Model = new VitConfig(Patch: 2, Dim: 16, Depth: 1, Heads: 2, MlpDim: 32),
        Epochs = 2,
        BatchSize = 10,
        TrainLimit = 42,
        TestLimit = 600,
        LearningRate = 5e-3,
        Seed = 5,
    };

    [Theory]
    [InlineData(AttentionKind.Softmax, 1)]
    [InlineData(AttentionKind.Softmax, 2)]
    [InlineData(AttentionKind.Softmax, 3)]
    [InlineData(AttentionKind.Softmax, 4)]
    [InlineData(AttentionKind.Random, 2)]
    [InlineData(AttentionKind.Random, 3)]
    public void Ranks_keep_the_same_bits_every_step_and_follow_one_process(AttentionKind kind, int ranks)
    {
        var options = Tiny(kind);
        var alone = Train(options, null);
        var runs = LocalCommunicator.Run(ranks, comm => Train(options, new Reducer(comm)));

        for (int r = 0; r < ranks; r++)
        {
            Assert.Equal(alone.Steps.Count, runs[r].Steps.Count);
            for (int s = 0; s < alone.Steps.Count; s++)
            {
                Assert.True(Bits(runs[0].Steps[s].Weights).SequenceEqual(Bits(runs[r].Steps[s].Weights)), $"rank {r} of {ranks}: weights differ from rank 0's after step {s + 1}");
                Assert.Equal(runs[0].Steps[s].Loss, runs[r].Steps[s].Loss);
            }

            Assert.Equal(runs[0].History, runs[r].History);
        }

        // The evaluation split over the ranks (chunk c on rank c mod P) makes the chunks one process makes: same weights, same hits.
        Assert.Equal(alone.InitialAccuracy, runs[0].InitialAccuracy);
        double worstLoss = alone.Steps.Zip(runs[0].Steps, (a, b) => Math.Abs(a.Loss - b.Loss)).Max();
        float worstWeight = alone.Steps[^1].Weights.Zip(runs[0].Steps[^1].Weights, (a, b) => Math.Abs(a - b)).Max();
        output.WriteLine($"{kind}, P = {ranks}: running mean loss within {worstLoss:E2} of one process's, final weights within {worstWeight:E2}");
        if (ranks == 1)
        {
            // One rank is one process: the very same operations.
            Assert.Equal(0, worstLoss);
            Assert.Equal(0, worstWeight);
        }

        Assert.True(worstLoss <= LossTolerance, $"P = {ranks}: running mean loss {worstLoss:E2} from one process's");
        Assert.True(worstWeight <= WeightTolerance, $"P = {ranks}: weights {worstWeight:E2} from one process's");
        for (int e = 0; e < alone.History.Count; e++)
        {
            Assert.Equal(alone.History[e].Epoch, runs[0].History[e].Epoch);
            Assert.InRange(runs[0].History[e].Loss, alone.History[e].Loss - LossTolerance, alone.History[e].Loss + LossTolerance);
        }

        Assert.Equal(alone.Steps.Select(s => s.Batch), runs[0].Steps.Select(s => s.Batch));
        Assert.All(runs.Skip(1), run => Assert.False(run.Saved, "only rank 0 writes the checkpoint"));
        Assert.True(runs[0].Saved);
    }

    [Fact]
    public void Ranks_resume_one_process_s_checkpoint_and_finish_its_run()
    {
        var options = Tiny(AttentionKind.Softmax);
        string dir = Data.TempDir();
        string path = Path.Combine(dir, "epoch1.safetensors");
        using var straight = VitTrainer.Create(Digits.Value, options);
        var full = straight.Train();
        using (var first = VitTrainer.Create(Digits.Value, options))
        {
            first.Train(epochs: 1);
            first.Save(path);
        }

        var finished = LocalCommunicator.Run(2, comm =>
        {
            using var resumed = VitTrainer.Resume(Digits.Value, path, new Reducer(comm));
            var result = resumed.Train();
            return (result.Completed, result.State.Step, Loss: result.State.History[^1].Loss, Weights: resumed.Model.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray());
        });
        Directory.Delete(dir, true);
        Assert.True(Bits(finished[0].Weights).SequenceEqual(Bits(finished[1].Weights)), "the ranks' weights differ after resuming");
        Assert.All(finished, f => Assert.Equal((true, full.State.Step), (f.Completed, f.Step)));
        Assert.InRange(finished[0].Loss, full.State.History[^1].Loss - LossTolerance, full.State.History[^1].Loss + LossTolerance);
        var expected = straight.Model.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();
        Assert.True(expected.Zip(finished[0].Weights, (a, b) => Math.Abs(a - b)).Max() <= WeightTolerance);
    }

    [Fact]
    public void Every_rank_starts_from_rank_0_s_weights()
    {
        // Each rank is handed other initial weights (as ranks whose generators drew other bits would hold): rank 0's win.
        using var scope = TorchReference.Start();
        var options = Tiny(AttentionKind.Softmax);
        var starts = Enumerable.Range(0, 3).Select(r =>
        {
            manual_seed(100 + r);
            return new VisionTransformer(options.Model, _ => new FastAttention.TorchSharp.SoftmaxAttentionModule());
        }).ToArray();
        float[] Weights(VisionTransformer model) => [.. model.parameters().SelectMany(p => p.data<float>().ToArray())];
        var held = LocalCommunicator.Run(3, comm =>
        {
            using var trainer = VitTrainer.Create(Digits.Value, options, starts[comm.Rank], new Reducer(comm));
            return Weights(trainer.Model);
        });
        Assert.False(Bits(Weights(starts[0])).SequenceEqual(Bits(Weights(starts[1]))));
        Assert.All(held, w => Assert.True(Bits(Weights(starts[0])).SequenceEqual(Bits(w))));
    }

    [Fact]
    public void A_slice_draws_the_random_keys_its_rows_of_the_whole_batch_draw()
    {
        using var scope = TorchReference.Start();
        manual_seed(11);
        var (q, k, v) = (randn(6, 2, 40, 8), randn(6, 2, 40, 8), randn(6, 2, 40, 8));
        using var attention = new RandomKeysAttention(top: 5, keepFirst: 1, seed: 3) { Step = 7 };
        var whole = attention.forward(q, k, v);
        attention.BatchOffset = 2;
        attention.BatchTotal = 6;
        var slice = attention.forward(q.narrow(0, 2, 3), k.narrow(0, 2, 3), v.narrow(0, 2, 3));
        Assert.Equal(whole.narrow(0, 2, 3).contiguous().data<float>().ToArray(), slice.data<float>().ToArray());
        // Without the offset the slice would draw the whole batch's first rows: other keys.
        attention.BatchOffset = 0;
        attention.BatchTotal = 0;
        var unkeyed = attention.forward(q.narrow(0, 2, 3), k.narrow(0, 2, 3), v.narrow(0, 2, 3));
        Assert.NotEqual(slice.data<float>().ToArray(), unkeyed.data<float>().ToArray());
    }

    [Fact]
    public void Ctrl_c_on_one_rank_stops_every_rank_at_the_same_step()
    {
        var options = Tiny(AttentionKind.Softmax);
        var states = LocalCommunicator.Run(3, comm =>
        {
            using var cancel = new CancellationTokenSource();
            using var trainer = VitTrainer.Create(Digits.Value, options, reducer: new Reducer(comm));
            // Rank 2 alone sees the signal, after its third step.
            var result = trainer.Train(comm.Rank == 2 ? new OnStep(3, cancel.Cancel) : null, cancel.Token);
            return (result.Cancelled, result.Completed, result.State.Step);
        });
        Assert.All(states, s => Assert.Equal((true, false, 4L), s)); // the flag rides on step 4's sum; all stop after it
    }

    [Fact]
    public void A_loss_that_is_not_finite_on_one_rank_stops_every_rank_before_the_update()
    {
        var options = Tiny(AttentionKind.Softmax);
        var outcomes = LocalCommunicator.Run(3, comm =>
        {
            // Rank 1 contributes NaN to the second step's sum, as a rank whose slice diverged would.
            var reducer = new Poisoning(new Reducer(comm), poisonStep: comm.Rank == 1 ? 2 : -1, stepLength: options.Model.ParameterCount + 3);
            using var trainer = VitTrainer.Create(Digits.Value, options, reducer: reducer);
            var recorder = new Recorder(trainer);
            var error = Assert.Throws<TrainingDivergedException>(() => trainer.Train(recorder));
            var weights = trainer.Model.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();
            return (error.Message, trainer.State.Step, Same: Bits(recorder.Steps[^1].Weights).SequenceEqual(Bits(weights)));
        });
        Assert.All(outcomes, o => Assert.Equal(outcomes[0].Message, o.Message));
        Assert.Contains("diverged at epoch 1, step 2: the loss is NaN", outcomes[0].Message);
        Assert.All(outcomes, o => Assert.Equal((1L, true), (o.Step, o.Same))); // the weights are those after step 1
    }

    [Fact]
    public void A_reducer_whose_rank_is_outside_its_size_is_refused_before_any_message()
    {
        var error = Assert.Throws<ArgumentException>(() => VitTrainer.Create(Digits.Value, Tiny(AttentionKind.Softmax), reducer: new Fixed(2, 2)));
        Assert.Equal("reducer", error.ParamName);
        Assert.Contains("rank 2 is not in 0..1", error.Message);
        Assert.Throws<ArgumentException>(() => VitTrainer.Create(Digits.Value, Tiny(AttentionKind.Softmax), reducer: new Fixed(0, 0)));
    }

    private static Run Train(TrainOptions options, IGradientReducer? reducer)
    {
        string dir = Data.TempDir();
        string path = Path.Combine(dir, "run.safetensors");
        using var trainer = VitTrainer.Create(Digits.Value, options, reducer: reducer);
        double initial = trainer.Evaluate();
        var recorder = new Recorder(trainer);
        var result = trainer.Train(recorder);
        Assert.True(result.Completed);
        trainer.Save(path);
        bool saved = File.Exists(path);
        Directory.Delete(dir, true);
        return new Run(recorder.Steps, [.. result.State.History.Select(e => e with { Seconds = 0, ImagesPerSecond = 0 })], initial, saved);
    }

    private static int[] Bits(float[] values) => MemoryMarshal.Cast<float, int>(values).ToArray();

    private sealed record Run(List<StepRecord> Steps, List<EpochRecord> History, double InitialAccuracy, bool Saved);

    /// <summary>After one step: the running mean loss and accuracy, the step count, and every weight.</summary>
    private sealed record StepRecord(double Loss, double Accuracy, int Batch, float[] Weights);

    /// <summary>Records each step as it is reported (on the training thread, not through a synchronisation context).</summary>
    private sealed class Recorder(VitTrainer trainer) : IProgress<TrainProgress>
    {
        public List<StepRecord> Steps { get; } = [];

        public void Report(TrainProgress value) =>
            Steps.Add(new StepRecord(value.Loss, value.Accuracy, value.Batch, [.. trainer.Model.parameters().SelectMany(p => p.data<float>().ToArray())]));
    }

    private sealed class OnStep(int step, Action action) : IProgress<TrainProgress>
    {
        private int seen;

        public void Report(TrainProgress value)
        {
            if (++seen == step)
            {
                action();
            }
        }
    }

    private sealed class Reducer(Communicator comm) : IGradientReducer
    {
        public int Rank => comm.Rank;

        public int Size => comm.Size;

        public void SumInPlace(Span<float> values) => comm.AllreduceSum(values);
    }

    /// <summary>Adds NaN to this rank's values in the <paramref name="poisonStep"/>-th step reduction (the one buffer of <paramref name="stepLength"/> floats).</summary>
    private sealed class Poisoning(IGradientReducer inner, int poisonStep, long stepLength) : IGradientReducer
    {
        private int steps;

        public int Rank => inner.Rank;

        public int Size => inner.Size;

        public void SumInPlace(Span<float> values)
        {
            if (values.Length == stepLength && ++steps == poisonStep)
            {
                values.Fill(float.NaN);
            }

            inner.SumInPlace(values);
        }
    }

    private sealed class Fixed(int rank, int size) : IGradientReducer
    {
        public int Rank => rank;

        public int Size => size;

        public void SumInPlace(Span<float> values) => throw new InvalidOperationException("no message may be sent before the reducer is validated");
    }
}
