using FastAttention.IO;
using FastAttention.Torch.Tests.Support;
using FastAttention.Training;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>The ViT trainer: the data split, AdamW against libtorch's, learning, checkpoints, bit-identical resume, cancellation.</summary>
public sealed class TrainingTests
{
    /// <summary>A model and run small enough for a test: 197 tokens (patch 2), width 16, one block, 128 images, batches of 32.</summary>
    private static TrainOptions Tiny(AttentionKind kind = AttentionKind.Softmax, int epochs = 2, long seed = 3) => new()
    {
        Attention = new AttentionChoice(kind, Top: 8, SketchSize: 8),
        Model = new VitConfig(Patch: 2, Dim: 16, Depth: 1, Heads: 2, MlpDim: 32),
        Epochs = epochs,
        BatchSize = 32,
        TrainLimit = 128,
        TestLimit = 64,
        Seed = seed,
    };

    private static readonly Lazy<MnistData> Digits = new(MnistData.LoadEmbedded);

    [Fact]
    public void Split_is_the_documented_one_8000_train_2000_test_every_digit_in_both()
    {
        var data = Digits.Value;
        Assert.Equal(10_000, data.Count);
        int[] train = data.TrainIndices(), test = data.TestIndices();
        Assert.Equal(8000, train.Length);
        Assert.Equal(2000, test.Length);
        Assert.All(test, i => Assert.Equal(4, i % 5));
        Assert.All(train, i => Assert.NotEqual(4, i % 5));
        Assert.Empty(train.Intersect(test));
        // data/mnist/README.md: 1001 zeros first, 1127 ones next, ... sorted by digit.
        int[] perDigit = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
        Assert.Equal(perDigit, Enumerable.Range(0, 10).Select(d => data.Labels.Count(l => l == d)));
        Assert.All(Enumerable.Range(0, 10), d => Assert.InRange(test.Count(i => data.Labels[i] == d), perDigit[d] / 5 - 1, perDigit[d] / 5 + 1));
        // Normalised pixels: (p / 255 - 0.1307) / 0.3081; the README's mean pixel 33.44.
        double meanPixel = data.Images.Average(x => (x * MnistData.Std + MnistData.Mean) * 255);
        Assert.InRange(meanPixel, 33.43, 33.45);
    }

    [Fact]
    public void Bad_data_files_are_one_line_errors_naming_the_file()
    {
        string dir = Directory.CreateTempSubdirectory("fa-mnist").FullName;
        try
        {
            var missing = Assert.Throws<InvalidDataException>(() => MnistData.Load(Path.Combine(dir, "none.npz")));
            Assert.Contains("none.npz: no such file", missing.Message);

            string onlyImages = Path.Combine(dir, "images-only.npz");
            NpzFile.Write(onlyImages, [new("images", new TensorData<float>(new float[2 * 784], 2, 28, 28))]);
            Assert.Contains("needs arrays 'images' and 'labels'", Assert.Throws<InvalidDataException>(() => MnistData.Load(onlyImages)).Message);

            string wrongShape = Path.Combine(dir, "wrong.npz");
            NpzFile.Write(wrongShape, [new("images", new TensorData<float>(new float[2 * 16], 2, 4, 4)), new("labels", new TensorData<float>([1, 2], 2))]);
            Assert.Contains("images has shape [2, 4, 4], expected [n, 28, 28]", Assert.Throws<InvalidDataException>(() => MnistData.Load(wrongShape)).Message);

            string badLabel = Path.Combine(dir, "label.npz");
            NpzFile.Write(badLabel, [new("images", new TensorData<float>(new float[784], 1, 28, 28)), new("labels", new TensorData<float>([12], 1))]);
            Assert.Contains("label 0 is 12", Assert.Throws<InvalidDataException>(() => MnistData.Load(badLabel)).Message);

            string garbage = Path.Combine(dir, "garbage.npz");
            File.WriteAllText(garbage, "not a zip");
            Assert.StartsWith($"data {garbage}:", Assert.Throws<InvalidDataException>(() => MnistData.Load(garbage)).Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void AdamW_matches_libtorch_AdamW_step_for_step()
    {
        using var scope = TorchReference.Start();
        manual_seed(7);
        var ours = randn(5, 4).requires_grad_();
        var bias = randn(4).requires_grad_();
        var theirs = new global::TorchSharp.Modules.Parameter(ours.detach().clone());
        var theirBias = new global::TorchSharp.Modules.Parameter(bias.detach().clone());
        using var adam = new AdamW([("w", ours), ("b", bias)], weightDecay: 0.05);
        // libtorch's AdamW on the same tensors; the bias without decay, as ours (decay applies to matrices only).
        var reference = optim.AdamW([theirs], lr: 0.01, weight_decay: 0.05);
        var referenceBias = optim.AdamW([theirBias], lr: 0.01, weight_decay: 0);
        var x = randn(3, 5);
        for (int step = 0; step < 4; step++)
        {
            foreach (var (w, b) in new[] { (ours, bias), ((Tensor)theirs, (Tensor)theirBias) })
            {
                w.grad?.zero_();
                b.grad?.zero_();
                (matmul(x, w) + b).square().sum().backward();
            }

            adam.Step(0.01);
            reference.step();
            referenceBias.step();
            Assert.Equal(theirs.data<float>().ToArray(), ours.data<float>().ToArray(), (a, c) => Math.Abs(a - c) <= 1e-6f * (1 + Math.Abs(c)));
            Assert.Equal(theirBias.data<float>().ToArray(), bias.data<float>().ToArray(), (a, c) => Math.Abs(a - c) <= 1e-6f * (1 + Math.Abs(c)));
        }
    }

    [Theory]
    [InlineData(AttentionKind.Softmax)]
    [InlineData(AttentionKind.Lev)]
    [InlineData(AttentionKind.Random)]
    [InlineData(AttentionKind.Norm)]
    [InlineData(AttentionKind.Sketch)]
    [InlineData(AttentionKind.Torch)]
    public void A_tiny_run_lowers_the_loss(AttentionKind kind)
    {
        using var trainer = VitTrainer.Create(Digits.Value, Tiny(kind, epochs: 6) with { LearningRate = 5e-3 });
        var result = trainer.Train();
        Assert.True(result.Completed);
        var history = result.State.History;
        Assert.Equal(6, history.Count);
        Assert.All(history, e => Assert.True(double.IsFinite(e.Loss)));
        Assert.True(history[^1].Loss < history[0].Loss - 0.02, $"{kind}: loss {string.Join(" -> ", history.Select(e => e.Loss.ToString("F4")))}");
        Assert.InRange(history[^1].TestAccuracy, 0, 1);
    }

    [Fact]
    public void Model_parameters_have_timm_names_and_the_documented_shapes()
    {
        using var scope = TorchReference.Start();
        var config = new VitConfig(Patch: 2, Dim: 16, Depth: 2, Heads: 2, MlpDim: 32);
        using var model = new VisionTransformer(config, _ => new FastAttention.TorchSharp.SoftmaxAttentionModule());
        var shapes = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.Equal([1, 1, 16], shapes["cls_token"]);
        Assert.Equal([1, 197, 16], shapes["pos_embed"]);
        Assert.Equal([16, 1, 2, 2], shapes["patch_embed.proj.weight"]);
        Assert.Equal([48, 16], shapes["blocks.1.attn.qkv.weight"]);
        Assert.Equal([16, 16], shapes["blocks.0.attn.proj.weight"]);
        Assert.Equal([32, 16], shapes["blocks.0.mlp.fc1.weight"]);
        Assert.Equal([16], shapes["blocks.1.norm2.bias"]);
        Assert.Equal([10, 16], shapes["head.weight"]);
        Assert.Equal(4 + 2 * 12 + 4, shapes.Count);
        using var logits = model.forward(zeros(3, 1, 28, 28));
        Assert.Equal([3, 10], logits.shape);
    }

    [Fact]
    public void Checkpoint_round_trip_restores_weights_moments_options_and_position()
    {
        string dir = Directory.CreateTempSubdirectory("fa-ckpt").FullName;
        try
        {
            string path = Path.Combine(dir, "run.safetensors");
            using var trainer = VitTrainer.Create(Digits.Value, Tiny(AttentionKind.Lev, epochs: 1));
            trainer.Train();
            trainer.Save(path);
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
            using var resumed = VitTrainer.Resume(Digits.Value, path);
            Assert.Equal(trainer.Options, resumed.Options);
            Assert.Equal(trainer.State.Step, resumed.State.Step);
            Assert.Equal(trainer.State.History, resumed.State.History);
            var before = trainer.Model.state_dict();
            foreach (var (name, value) in resumed.Model.state_dict())
            {
                Assert.Equal(before[name].data<float>().ToArray(), value.data<float>().ToArray());
            }

            // PyTorch-style names: what Python's safetensors.torch.load_file would hand to a timm-like ViT.
            var names = SafeTensorsFile.Names(path);
            Assert.Contains("blocks.0.attn.qkv.weight", names);
            Assert.Contains("optimizer.exp_avg.head.weight", names);
            Assert.Contains("optimizer.exp_avg_sq.pos_embed", names);
            Assert.Equal(trainer.Evaluate(), resumed.Evaluate());
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Resuming_a_cancelled_run_gives_the_uninterrupted_run_s_bits()
    {
        string dir = Directory.CreateTempSubdirectory("fa-resume").FullName;
        try
        {
            // Random keys: the draws depend on the step, so the resumed run must restore it too.
            var options = Tiny(AttentionKind.Random, epochs: 2);
            using var straight = VitTrainer.Create(Digits.Value, options);
            var full = straight.Train();

            using var cancel = new CancellationTokenSource();
            using var interrupted = VitTrainer.Create(Digits.Value, options);
            var stopped = interrupted.Train(new StopAfter(5, cancel), cancel.Token);
            Assert.False(stopped.Completed);
            Assert.Equal((1, 1, 5L), (stopped.State.Epoch, stopped.State.Batch, stopped.State.Step)); // 4 steps per epoch: epoch 2, step 2
            string path = Path.Combine(dir, "stopped.safetensors");
            interrupted.Save(path);

            using var resumed = VitTrainer.Resume(Digits.Value, path);
            var rest = resumed.Train();
            Assert.True(rest.Completed);
            var expected = straight.Model.state_dict();
            foreach (var (name, value) in resumed.Model.state_dict())
            {
                Assert.True(expected[name].data<float>().ToArray().SequenceEqual(value.data<float>().ToArray()), $"{name} differs after resuming");
            }

            Assert.Equal(full.State.History.Select(e => (e.Loss, e.TrainAccuracy, e.TestAccuracy)), rest.State.History.Select(e => (e.Loss, e.TrainAccuracy, e.TestAccuracy)));
            Assert.Equal((full.State.Epoch, full.State.Batch, full.State.Step), (rest.State.Epoch, rest.State.Batch, rest.State.Step));

            // The optimizer's moments too (they steer every later step).
            string a = Path.Combine(dir, "a.safetensors"), b = Path.Combine(dir, "b.safetensors");
            straight.Save(a);
            resumed.Save(b);
            var moments = SafeTensorsFile.ReadAllFloat32(a).Where(t => t.Key.StartsWith("optimizer.", StringComparison.Ordinal)).ToList();
            var resumedMoments = SafeTensorsFile.ReadAllFloat32(b);
            Assert.NotEmpty(moments);
            Assert.All(moments, m => Assert.True(m.Value.Data.AsSpan().SequenceEqual(resumedMoments[m.Key].Data), $"{m.Key} differs"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void A_cancelled_token_stops_at_the_next_step_and_a_finished_run_trains_no_more()
    {
        using var cancel = new CancellationTokenSource();
        using var trainer = VitTrainer.Create(Digits.Value, Tiny(epochs: 1));
        cancel.Cancel();
        var result = trainer.Train(null, cancel.Token);
        Assert.False(result.Completed);
        Assert.Equal(0, result.State.Step);
        var done = trainer.Train();
        Assert.True(done.Completed);
        Assert.Equal(4, done.State.Step);
        var again = trainer.Train();
        Assert.True(again.Completed);
        Assert.Equal(4, again.State.Step);
    }

    [Fact]
    public void Training_an_epoch_at_a_time_gives_the_bits_of_one_call()
    {
        using var whole = VitTrainer.Create(Digits.Value, Tiny(epochs: 2));
        whole.Train();
        using var stepwise = VitTrainer.Create(Digits.Value, Tiny(epochs: 2));
        var first = stepwise.Train(epochs: 1);
        Assert.False(first.Completed);
        Assert.Equal((1, 0, 4L), (first.State.Epoch, first.State.Batch, first.State.Step));
        Assert.True(stepwise.Train(epochs: 1).Completed);
        Assert.Throws<ArgumentOutOfRangeException>(() => stepwise.Train(epochs: 0));
        var expected = whole.Model.state_dict();
        foreach (var (name, value) in stepwise.Model.state_dict())
        {
            Assert.Equal(expected[name].data<float>().ToArray(), value.data<float>().ToArray());
        }
    }

    [Fact]
    public void Damaged_or_foreign_checkpoints_are_one_line_errors()
    {
        string dir = Directory.CreateTempSubdirectory("fa-bad-ckpt").FullName;
        try
        {
            string foreign = Path.Combine(dir, "foreign.safetensors");
            SafeTensorsFile.Write(foreign, [new("w", new TensorData<float>([1f], 1))]);
            Assert.Contains("not a FastAttention ViT checkpoint", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, foreign)).Message);
            Assert.Contains("no such file", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, Path.Combine(dir, "none.safetensors"))).Message);

            // A checkpoint whose head was replaced by one of another shape.
            string good = Path.Combine(dir, "good.safetensors");
            using (var trainer = VitTrainer.Create(Digits.Value, Tiny(epochs: 1)))
            {
                trainer.Save(good);
            }

            string Replace(string name, int[] shape)
            {
                var tensors = SafeTensorsFile.ReadAll(good).Select(t => t.Key == "head.weight" ? new KeyValuePair<string, TensorData>(t.Key, new TensorData<float>(new float[shape[0] * shape[1]], shape)) : t);
                string file = Path.Combine(dir, name);
                SafeTensorsFile.Write(file, tensors, SafeTensorsFile.Metadata(good));
                return file;
            }

            // The same number of floats in another shape: named by the shape check.
            var error = Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, Replace("reshaped.safetensors", [16, 10])));
            Assert.Contains("tensor head.weight has shape [16, 10], the model needs [10, 16]", error.Message);
            // Fewer floats than the model: refused before any model is built.
            error = Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, Replace("smaller.safetensors", [2, 10])));
            Assert.Contains("model parameters, but its model", error.Message);

            // A position no run reaches, and an attention kind given as a number.
            var metadata = SafeTensorsFile.Metadata(good).ToDictionary();
            string Doctor(string name, string key, string from, string to)
            {
                string file = Path.Combine(dir, name);
                var changed = new Dictionary<string, string>(metadata) { [key] = metadata[key].Replace(from, to, StringComparison.Ordinal) };
                Assert.NotEqual(metadata[key], changed[key]);
                SafeTensorsFile.Write(file, SafeTensorsFile.ReadAll(good), changed);
                return file;
            }

            Assert.Contains("is not one a run reaches", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, Doctor("position.safetensors", "state", "\"epoch\":0", "\"epoch\":7"))).Message);
            Assert.Contains("metadata 'options' is not valid", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, Doctor("kind.safetensors", "options", "\"softmax\"", "5"))).Message);

            // Other data than the run trained on.
            var other = MnistData.Load(WriteDigits(dir, 50));
            Assert.Contains("trained on other data", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(other, good)).Message);

            string truncated = Path.Combine(dir, "truncated.safetensors");
            File.WriteAllBytes(truncated, File.ReadAllBytes(good)[..200]);
            Assert.StartsWith($"checkpoint {truncated}:", Assert.Throws<InvalidDataException>(() => VitTrainer.Resume(Digits.Value, truncated)).Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Random_keys_depend_on_seed_and_step_only_and_norm_keys_are_the_largest()
    {
        using var scope = TorchReference.Start();
        manual_seed(1);
        var q = randn(2, 2, 20, 4);
        var k = randn(2, 2, 20, 4);
        var v = randn(2, 2, 20, 4);
        using var first = new RandomKeysAttention(5, 1, seed: 9) { Step = 3 };
        using var same = new RandomKeysAttention(5, 1, seed: 9) { Step = 3 };
        using var later = new RandomKeysAttention(5, 1, seed: 9) { Step = 4 };
        Assert.Equal(first.forward(q, k, v).data<float>().ToArray(), same.forward(q, k, v).data<float>().ToArray());
        Assert.NotEqual(first.forward(q, k, v).data<float>().ToArray(), later.forward(q, k, v).data<float>().ToArray());

        // Largest-norm keys: the same as softmax over key 0 and the 5 keys of largest norm among the rest (float64 reference).
        using var norm = new LargestNormKeysAttention(5, 1);
        var output = norm.forward(q, k, v);
        var keys = k.to_type(ScalarType.Float64);
        var norms = keys.narrow(2, 1, 19).square().sum(-1);
        var top = norms.topk(5, dim: 2).indexes + 1;
        var mask = zeros(2, 2, 20, dtype: ScalarType.Bool);
        mask.index_put_(tensor(true), TensorIndex.Ellipsis, TensorIndex.Single(0));
        mask.scatter_(2, top, ones_like(top, dtype: ScalarType.Bool));
        var scores = matmul(q.to_type(ScalarType.Float64), keys.transpose(2, 3)) / 2.0;
        scores = scores.masked_fill(mask.unsqueeze(2).logical_not(), double.NegativeInfinity);
        var expected = matmul(scores.softmax(-1), v.to_type(ScalarType.Float64));
        Assert.True((output.to_type(ScalarType.Float64) - expected).abs().max().item<double>() < 1e-5);
    }

    [Fact]
    public void Selected_keys_gradients_match_float64_autograd_of_softmax_over_the_kept_keys()
    {
        using var scope = TorchReference.Start();
        manual_seed(2);
        var q = randn(2, 2, 9, 5).requires_grad_();
        var k = randn(2, 2, 23, 5).requires_grad_();
        var v = randn(2, 2, 23, 3).requires_grad_();
        var weight = randn(2, 2, 9, 3);
        using var norm = new LargestNormKeysAttention(6, 2);
        (norm.forward(q, k, v) * weight).sum().backward();

        // float64 reference: softmax over keys 0, 1 and the 6 largest-norm keys among the rest, differentiated by autograd.
        var q64 = q.detach().to_type(ScalarType.Float64).requires_grad_();
        var k64 = k.detach().to_type(ScalarType.Float64).requires_grad_();
        var v64 = v.detach().to_type(ScalarType.Float64).requires_grad_();
        var top = k64.detach().narrow(2, 2, 21).square().sum(-1).topk(6, dim: 2).indexes + 2;
        var kept = zeros(2, 2, 23, dtype: ScalarType.Bool);
        kept.narrow(2, 0, 2).fill_(true);
        kept.scatter_(2, top, ones_like(top, dtype: ScalarType.Bool));
        var scores = (matmul(q64, k64.transpose(2, 3)) / Math.Sqrt(5)).masked_fill(kept.unsqueeze(2).logical_not(), double.NegativeInfinity);
        (matmul(scores.softmax(-1), v64) * weight.to_type(ScalarType.Float64)).sum().backward();
        foreach (var (ours, reference, name) in new[] { (q.grad!, q64.grad!, "dQ"), (k.grad!, k64.grad!, "dK"), (v.grad!, v64.grad!, "dV") })
        {
            double error = (ours.to_type(ScalarType.Float64) - reference).abs().max().item<double>();
            Assert.True(error < 1e-5, $"{name}: max error {error}");
        }

        // Keys outside the selection get no gradient.
        var outside = kept.logical_not().unsqueeze(-1).expand(-1, -1, -1, 5);
        Assert.Equal(0, k.grad!.masked_select(outside).abs().max().item<float>());
    }

    /// <summary>An .npz of the first <paramref name="count"/> embedded digits (raw pixels), for runs on other data.</summary>
    private static string WriteDigits(string dir, int count)
    {
        var data = Digits.Value;
        float[] pixels = [.. data.Images.Take(count * MnistData.Pixels).Select(x => MathF.Round(((x * MnistData.Std) + MnistData.Mean) * 255))];
        string path = Path.Combine(dir, $"digits{count}.npz");
        NpzFile.Write(path, [new("images", new TensorData<float>(pixels, count, 28, 28)), new("labels", new TensorData<float>([.. data.Labels.Take(count).Select(l => (float)l)], count))]);
        return path;
    }

    /// <summary>Cancels after a number of steps (the progress report comes after each step).</summary>
    private sealed class StopAfter(int steps, CancellationTokenSource cancel) : IProgress<TrainProgress>
    {
        private int seen;

        public void Report(TrainProgress value)
        {
            if (++seen == steps)
            {
                cancel.Cancel();
            }
        }
    }
}
