using System.Text.Json;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary><c>fastattn train vit</c> and <c>eval vit</c>: a short run end to end, JSON, checkpoints, resume, Ctrl-C, and bad input.</summary>
public class CliTrainTests : CliTest
{
    /// <summary>A run of 64 images (two steps of 32) on the embedded digits.</summary>
    private static string[] Short(string checkpoint, params string[] more) => Epochs(1, checkpoint, more);

    /// <summary>A run of 64 images (two steps of 32) a given number of epochs.</summary>
    private static string[] Epochs(int epochs, string checkpoint, params string[] more) =>
        ["train", "vit", "--epochs", epochs.ToString(System.Globalization.CultureInfo.InvariantCulture), "--train-limit", "64", "--batch", "32", "--threads", "1", "--checkpoint", checkpoint, .. more];

    [Fact]
    public void Train_match2_learns_and_its_json_ends_with_test_accuracy_on_fresh_sequences()
    {
        var (code, stdout, stderr) = Run("train", "match2", "--n", "8", "--steps", "150", "--batch", "32", "--test", "128", "--threads", "1", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        Assert.Equal("testAccuracy", root.EnumerateObject().Last().Name);
        Assert.True(root.GetProperty("testAccuracy").GetDouble() >= 0.9, stdout);
        Assert.Equal("tensor", root.GetProperty("attention").GetString());
        Assert.Equal(131, root.GetProperty("m").GetInt32()); // the smallest prime >= 2 N^2
        Assert.Equal(8, root.GetProperty("n").GetInt32());
        var curve = root.GetProperty("curve").EnumerateArray().Select(p => p.GetProperty("step").GetInt32()).ToList();
        Assert.Equal([0, 7, 14], curve.Take(3)); // step 0, then every 150 / 20 = 7 steps, and the last
        Assert.Equal(150, curve[^1]);
        Assert.True(root.GetProperty("parameters").GetInt64() > 0);

        (code, stdout, stderr) = Run("train", "match3", "--attention", "softmax", "--heads", "3", "--head-dim", "32", "--n", "6", "--steps", "5", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.Contains("training softmax 1x3x32", stdout);
        Assert.Contains("fresh sequences", stdout);
    }

    [Fact]
    public void Train_json_ends_with_test_accuracy_and_eval_swaps_the_attention()
    {
        string dir = Data.TempDir();
        string checkpoint = Path.Combine(dir, "vit.safetensors");
        var (code, stdout, stderr) = Run(Short(checkpoint, "--attention", "lev", "--top", "16", "--json"));
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var properties = json.RootElement.EnumerateObject().ToList();
        Assert.Equal("testAccuracy", properties[^1].Name);
        Assert.InRange(properties[^1].Value.GetDouble(), 0, 1);
        Assert.Equal("lev", json.RootElement.GetProperty("attention").GetString());
        Assert.Equal(197, json.RootElement.GetProperty("tokens").GetInt32());
        Assert.Equal(1, json.RootElement.GetProperty("history").GetArrayLength());
        Assert.Contains("blocks.0.attn.qkv.weight", SafeTensorsFile.Names(checkpoint));

        (code, stdout, stderr) = Run("eval", "vit", "--checkpoint", checkpoint, "--attention", "softmax", "--json");
        Assert.True(code == 0, stderr);
        using var eval = JsonDocument.Parse(stdout);
        Assert.Equal("softmax", eval.RootElement.GetProperty("evaluatedWith").GetString());
        Assert.Equal(2000, eval.RootElement.GetProperty("testImages").GetInt32());
        (code, stdout, _) = Run("eval", "vit", "--checkpoint", checkpoint);
        Assert.Equal(0, code);
        Assert.Contains("with lev top-16 attention", stdout);
    }

    [Fact]
    public void Ctrl_c_saves_the_checkpoint_exits_130_and_resume_finishes_the_run()
    {
        string dir = Data.TempDir();
        string checkpoint = Path.Combine(dir, "run.safetensors");
        using var cancel = new CancellationTokenSource();
        // "Ctrl-C" when the first of two epochs is reported: the trainer stops at its next step boundary (after the
        // epoch's evaluation and save) and saves again.
        var stdout = new CancelOnLine("epoch 1/2:", cancel);
        var stderr = new StringWriter();
        string[] run = Epochs(2, checkpoint, "--attention", "random", "--top", "8");
        int code = FastAttention.Cli.Cli.Run(run, stdout, stderr, null, cancel.Token);
        Assert.Equal(130, code);
        Assert.Contains($"saved to {checkpoint}", stderr.ToString());
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        string state = SafeTensorsFile.Metadata(checkpoint)["state"];
        Assert.Contains("\"epoch\":1", state, StringComparison.Ordinal);

        string continued = Path.Combine(dir, "continued.safetensors");
        var (resumeCode, output, errors) = Run("train", "vit", "--resume", checkpoint, "--checkpoint", continued, "--threads", "1", "--json");
        Assert.True(resumeCode == 0, errors);
        using var json = JsonDocument.Parse(output);
        Assert.Equal("random", json.RootElement.GetProperty("attention").GetString());
        Assert.Equal(2, json.RootElement.GetProperty("history").GetArrayLength());

        // The same run without the interruption: the same weights and moments, bit for bit, and the same position.
        string straight = Path.Combine(dir, "straight.safetensors");
        Assert.Equal(0, Run(Epochs(2, straight, "--attention", "random", "--top", "8", "--json")).Code);
        var expected = SafeTensorsFile.ReadAllFloat32(straight);
        var actual = SafeTensorsFile.ReadAllFloat32(continued);
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, tensor) in actual)
        {
            Assert.True(expected[name].Data.AsSpan().SequenceEqual(tensor.Data), $"{name} differs");
        }

        using var a = JsonDocument.Parse(SafeTensorsFile.Metadata(straight)["state"]);
        using var b = JsonDocument.Parse(SafeTensorsFile.Metadata(continued)["state"]);
        Assert.Equal(a.RootElement.GetProperty("step").GetInt64(), b.RootElement.GetProperty("step").GetInt64());
        Assert.Equal(a.RootElement.GetProperty("history")[1].GetProperty("loss").GetDouble(), b.RootElement.GetProperty("history")[1].GetProperty("loss").GetDouble());
    }

    [Theory]
    [InlineData("train resnet", 2, "name the model")]
    [InlineData("train vit --attention bogus", 2, "bogus")]
    [InlineData("train vit --top 8", 2, "--top applies to --attention lev, random or norm")]
    [InlineData("train vit --epochs 0", 2, "--epochs must be an integer from 1")]
    [InlineData("train match3 --n 32 --m 100", 2, "modulus M = 100 is too small for Match3 at N = 32")]
    [InlineData("train match3 --attention lev", 2, "match3 takes tensor or softmax")]
    [InlineData("train match3 --attention softmax --window 4,2", 2, "--window applies to --attention tensor")]
    [InlineData("train match3 --window 4", 2, "expected two positive integers W1,W2")]
    [InlineData("train match2 --top 4", 2, "--top applies to 'train vit', not to match2")]
    [InlineData("train vit --n 8", 2, "--n applies to 'train match3' and 'train match2', not to vit")]
    [InlineData("train match3 --curriculum 40 --n 32", 2, "--curriculum")]
    [InlineData("train vit --checkpoint out.npz", 2, "the extension must be .safetensors")]
    [InlineData("eval vit", 2, "--checkpoint is required")]
    [InlineData("eval vit --checkpoint none.safetensors", 3, "checkpoint none.safetensors: no such file")]
    [InlineData("train vit --data none.npz --checkpoint x.safetensors", 3, "data none.npz: no such file")]
    public void Bad_input_is_one_line_and_exit_2_or_3(string line, int expected, string message)
    {
        string dir = Data.TempDir();
        string previous = Environment.CurrentDirectory;
        Environment.CurrentDirectory = dir;
        try
        {
            var (code, _, stderr) = Run(line.Split(' '));
            Assert.Equal(expected, code);
            Assert.Contains(message, stderr);
            Assert.Single(stderr.Trim().Split('\n'));
            Assert.Empty(Directory.GetFiles(dir));
        }
        finally
        {
            Environment.CurrentDirectory = previous;
        }
    }

    [PythonFact]
    public void Python_reads_the_checkpoint_and_its_numpy_forward_predicts_as_eval_does()
    {
        Prerequisite.Require(PythonFactAttribute.IsAvailable, PythonFactAttribute.Missing);
        string dir = Data.TempDir();
        string checkpoint = Path.Combine(dir, "vit.safetensors");
        Assert.Equal(0, Run(["train", "vit", "--epochs", "1", "--train-limit", "256", "--threads", "1", "--checkpoint", checkpoint, "--json"]).Code);
        const int Count = 64;
        string script = Path.Combine(Data.RepoRoot, "tests", "FastAttention.Tests", "Python", "vit_forward.py");
        string mnist = Path.Combine(Data.RepoRoot, "data", "mnist", "mnist.npz");
        (int exit, string output) = Processes.Run(PythonFactAttribute.Python, [script, checkpoint, mnist, Count.ToString(System.Globalization.CultureInfo.InvariantCulture)], dir, TimeSpan.FromMinutes(2));
        Assert.True(exit == 0, output);
        double[][] numpy = JsonSerializer.Deserialize<double[][]>(output.Trim().Split('\n')[^1])!;

        // The same model in TorchSharp (our kernels) on the same first 64 test digits.
        using var trainer = FastAttention.Training.VitTrainer.Resume(FastAttention.Training.MnistData.LoadEmbedded(), checkpoint);
        float[][] ours = trainer.Logits(Count);
        Assert.Equal(Count, numpy.Length);
        for (int i = 0; i < Count; i++)
        {
            for (int c = 0; c < 10; c++)
            {
                Assert.True(Math.Abs(ours[i][c] - numpy[i][c]) <= 1e-4 * (1 + Math.Abs(numpy[i][c])), $"image {i} class {c}: ours {ours[i][c]}, NumPy {numpy[i][c]}");
            }
        }
    }

    [Fact]
    public void Resume_never_overwrites_its_input_and_keeps_the_run_s_options()
    {
        string dir = Data.TempDir();
        string checkpoint = Path.Combine(dir, "run.safetensors");
        Assert.Equal(0, Run(Short(checkpoint, "--json")).Code);
        byte[] before = File.ReadAllBytes(checkpoint);
        var (code, _, stderr) = Run("train", "vit", "--resume", checkpoint);
        Assert.Equal(2, code);
        Assert.Contains("--resume needs --checkpoint", stderr);
        (code, _, stderr) = Run("train", "vit", "--resume", checkpoint, "--checkpoint", checkpoint, "--force");
        Assert.Equal(2, code);
        Assert.Contains("an output never replaces an input", stderr);
        (code, _, stderr) = Run("train", "vit", "--resume", checkpoint, "--checkpoint", Path.Combine(dir, "b.safetensors"), "--epochs", "3");
        Assert.Equal(2, code);
        Assert.Contains("--epochs comes from the checkpoint", stderr);
        (code, _, stderr) = Run(Short(checkpoint));
        Assert.Equal(2, code);
        Assert.Contains("already exists; pass --force", stderr);
        Assert.Equal(before, File.ReadAllBytes(checkpoint));
    }

    /// <summary>A stdout that cancels a token when a line starting with a prefix is written.</summary>
    private sealed class CancelOnLine(string prefix, CancellationTokenSource cancel) : StringWriter
    {
        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            if (value?.StartsWith(prefix, StringComparison.Ordinal) == true)
            {
                cancel.Cancel();
            }
        }
    }
}
