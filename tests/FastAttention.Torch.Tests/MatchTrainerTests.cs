using FastAttention.Training;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>The Match3 / Match2 models and trainer: stated parameter counts, learning, determinism, options.</summary>
public sealed class MatchTrainerTests
{
    private static MatchOptions Small(MatchKind kind, string model, int steps = 150, long seed = 4, int n = 8) =>
        new(new MatchTask(kind, n, MatchTask.DefaultModulus(kind, n)), MatchModelConfig.Variant(model), Steps: steps, BatchSize: 32, Seed: seed, TestSequences: 128, EvalEvery: 50);

    [Theory]
    [InlineData("tensor")]
    [InlineData("softmax")]
    [InlineData("softmax-heads")]
    [InlineData("softmax-2layer")]
    public void The_stated_parameter_count_is_the_models(string variant)
    {
        foreach (var config in new[] { MatchModelConfig.Variant(variant), MatchModelConfig.Variant(variant) with { Frequencies = 7, Hidden = 9 } })
        {
            using var model = new MatchModel(config, 1009, 1);
            Assert.Equal(config.ParameterCount, model.parameters().Sum(p => p.numel()));
            Assert.Equal(Math.Min(config.Frequencies, 504), model.Frequencies.Count);
            Assert.All(model.Frequencies, f => Assert.InRange(f, 1, 504));
            Assert.Equal(model.Frequencies.Count, model.Frequencies.Distinct().Count());
        }

        // (c) has (a)'s attention parameters exactly: 3 heads of 32 with q, k, v, out against one head of 64 with q, k1, k2, v1, v2, out.
        Assert.Equal(MatchModelConfig.Variant("tensor").AttentionParameterCount - 1, MatchModelConfig.Variant("softmax-heads").AttentionParameterCount - 3);
    }

    [Theory]
    [InlineData("tensor")]
    [InlineData("softmax")]
    public void A_short_run_learns_the_match2_control(string variant)
    {
        using var trainer = new MatchTrainer(Small(MatchKind.Match2, variant));
        var result = trainer.Train();
        Assert.True(result.Completed);
        Assert.InRange(result.Curve[0].TestAccuracy, 0.3, 0.7); // balanced labels: an untrained model is near chance
        Assert.True(result.TestAccuracy >= 0.9, $"{variant}: test accuracy {result.TestAccuracy:P1} after 150 steps; curve {string.Join(" ", result.Curve.Select(p => $"{p.Step}:{p.TestAccuracy:F3}"))}");
        Assert.Equal([0, 50, 100, 150], result.Curve.Select(p => p.Step));
        Assert.Equal(result.TestAccuracy, trainer.Evaluate());
    }

    [Fact]
    public void The_same_seed_gives_the_same_run_and_another_seed_another()
    {
        MatchResult Run(long seed, MatchTask? task = null)
        {
            var options = Small(MatchKind.Match3, "tensor", steps: 20, seed: seed) with { EvalEvery = 10 };
            using var trainer = new MatchTrainer(task is null ? options : options with { Task = task, Model = options.Model with { Causal = task.Causal } });
            return trainer.Train();
        }

        var a = Run(9);
        var b = Run(9);
        Assert.Equal(a.Curve.Select(p => (p.Loss, p.TestAccuracy)), b.Curve.Select(p => (p.Loss, p.TestAccuracy)));
        Assert.NotEqual(a.Curve.Select(p => p.Loss), Run(10).Curve.Select(p => p.Loss));
        var causal = new MatchTask(MatchKind.Match3, 12, MatchTask.DefaultModulus(MatchKind.Match3, 12), Causal: true, Span: 4, Span2: 2);
        Assert.Equal(Run(9, causal).Curve.Select(p => p.Loss), Run(9, causal).Curve.Select(p => p.Loss));
    }

    [Fact]
    public void The_curriculum_grows_the_length_and_the_schedule_warms_up_and_decays()
    {
        var options = Small(MatchKind.Match3, "tensor", steps: 100, n: 32) with { CurriculumFrom = 8, CurriculumFraction = 0.5, WarmupSteps = 10, DecayFraction = 0.2 };
        using var trainer = new MatchTrainer(options);
        Assert.Equal(8, trainer.LengthAt(0));
        Assert.Equal(20, trainer.LengthAt(25));
        Assert.Equal(32, trainer.LengthAt(50));
        Assert.Equal(32, trainer.LengthAt(99));
        Assert.Equal(options.LearningRate / 10, trainer.LearningRate(0), 12);
        Assert.Equal(options.LearningRate, trainer.LearningRate(50), 12);
        Assert.Equal(options.LearningRate / 2, trainer.LearningRate(90), 12);
        Assert.Equal(options.LearningRate / 20, trainer.LearningRate(99), 12);
    }

    [Fact]
    public void Cancelling_stops_between_steps()
    {
        using var trainer = new MatchTrainer(Small(MatchKind.Match2, "softmax", steps: 1000));
        using var cancel = new CancellationTokenSource();
        var result = trainer.Train(new CancelAt(3, cancel), cancel.Token);
        Assert.False(result.Completed);
        Assert.Single(result.Curve); // only the untrained evaluation: cancelled long before the first interval
    }

    [Fact]
    public void Bad_options_are_named_errors()
    {
        var good = Small(MatchKind.Match3, "tensor");
        Assert.Equal("Steps", Assert.Throws<ArgumentException>(() => new MatchTrainer(good with { Steps = 0 })).ParamName);
        Assert.Equal("CurriculumFrom", Assert.Throws<ArgumentException>(() => new MatchTrainer(good with { CurriculumFrom = 9 })).ParamName);
        Assert.Equal("Model", Assert.Throws<ArgumentException>(() => new MatchTrainer(good with { Task = good.Task with { Causal = true } })).ParamName);
        Assert.Equal("Window", Assert.Throws<ArgumentException>(() => new MatchTrainer(good with { Model = MatchModelConfig.Variant("softmax") with { Window = (2, 2) } })).ParamName);
        Assert.Equal("Modulus", Assert.Throws<ArgumentException>(() => new MatchTrainer(good with { Task = good.Task with { Modulus = 10 } })).ParamName);
        Assert.Throws<ArgumentException>(() => MatchModelConfig.Variant("nope"));
    }

    [Fact]
    public void The_model_classifies_every_position_and_takes_a_single_token()
    {
        using var model = new MatchModel(MatchModelConfig.Variant("tensor"), 101, 2);
        using var x = tensor(new long[] { 1, 50, 7, 3, 0 }, [1, 5]);
        using var logits = model.forward(x);
        Assert.Equal([1L, 5], logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
        // One token alone is a valid sequence (it sees only the pair (i, i)).
        using var one = model.forward(tensor(new long[] { 4 }, [1, 1]));
        Assert.Equal([1L, 1], one.shape);
    }

    /// <summary>Cancels synchronously once a step is reached.</summary>
    private sealed class CancelAt(int step, CancellationTokenSource source) : IProgress<MatchProgress>
    {
        public void Report(MatchProgress value)
        {
            if (value.Step >= step)
            {
                source.Cancel();
            }
        }
    }
}
