using System.Text.Json;
using FastAttention.Distributed.Tests.Support;
using FastAttention.IO;
using FastAttention.Tests.Support;
using FastAttention.Training;
using Xunit.Abstractions;

namespace FastAttention.Torch.Tests;

/// <summary>
/// <c>mpiexec -n P fastattn train vit --distributed</c> against one process's <c>fastattn train vit</c> with the same
/// settings, on 60 digits written to an .npz (48 training images in batches of 10: 10, 10, 10, 10, 8; 12 test images).
/// </summary>
public sealed class DataParallelCliTests(ITestOutputHelper output)
{
    /// <summary>Per-epoch mean loss, P processes against one (DataParallelTrainingTests states why; observed within 2.4e-7 here for P = 2, 3, 4).</summary>
    private const double LossTolerance = 1e-5;

    private static readonly Lazy<string> DigitsFile = new(WriteDigits);

    private static readonly Lazy<JsonElement> Alone = new(() => Json(MpiJob.Execute("dotnet", [Cli, .. Settings("alone")], TimeSpan.FromMinutes(3)), "one process"));

    private static string Cli
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "fastattn.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException("fastattn was not built beside the tests", path);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Ranks_under_mpiexec_print_one_process_s_loss_curve_once(int ranks)
    {
        var result = MpiJob.Run(ranks, ["dotnet", Cli, .. Settings($"ranks{ranks}"), "--distributed"]);
        // Rank 0 alone prints: two ranks' JSON would not parse as one document.
        var run = Json(result, $"mpiexec -n {ranks}");
        Assert.Equal(ranks, run.GetProperty("ranks").GetInt32());
        Assert.Equal(1, run.GetProperty("threads").GetInt32());
        var alone = Alone.Value;
        Assert.Equal(1, alone.GetProperty("ranks").GetInt32());
        var expected = alone.GetProperty("history").EnumerateArray().ToList();
        var actual = run.GetProperty("history").EnumerateArray().ToList();
        Assert.Equal(3, expected.Count);
        Assert.Equal(expected.Count, actual.Count);
        for (int e = 0; e < expected.Count; e++)
        {
            double want = expected[e].GetProperty("loss").GetDouble(), got = actual[e].GetProperty("loss").GetDouble();
            output.WriteLine($"-n {ranks}, epoch {e + 1}: loss {got:R}, alone {want:R}, difference {Math.Abs(want - got):E2}");
            Assert.True(Math.Abs(want - got) <= LossTolerance, $"epoch {e + 1}: loss {got} with {ranks} ranks, {want} alone\n{result}");
            // Weights within ~1e-5 of each other flip an image's class only at a near tie: at most one image of 48 or 12.
            Assert.InRange(actual[e].GetProperty("trainAccuracy").GetDouble(), expected[e].GetProperty("trainAccuracy").GetDouble() - 1.0 / 48, expected[e].GetProperty("trainAccuracy").GetDouble() + 1.0 / 48);
            Assert.InRange(actual[e].GetProperty("testAccuracy").GetDouble(), expected[e].GetProperty("testAccuracy").GetDouble() - 1.0 / 12, expected[e].GetProperty("testAccuracy").GetDouble() + 1.0 / 12);
        }

        Assert.True(File.Exists(run.GetProperty("checkpoint").GetString()), "rank 0 saves the checkpoint");
    }

    [Fact]
    public void Distributed_without_mpiexec_is_the_one_process_run()
    {
        var run = Json(MpiJob.Execute("dotnet", [Cli, .. Settings("single"), "--distributed"], TimeSpan.FromMinutes(3)), "--distributed without mpiexec");
        Assert.Equal(1, run.GetProperty("ranks").GetInt32());
        var expected = Alone.Value.GetProperty("history").EnumerateArray().Select(Losses).ToList();
        Assert.Equal(expected, run.GetProperty("history").EnumerateArray().Select(Losses).ToList());
        Assert.Equal(Alone.Value.GetProperty("testAccuracy").GetDouble(), run.GetProperty("testAccuracy").GetDouble());

        // The match tasks have no data-parallel trainer: said before anything loads.
        var match = MpiJob.Execute("dotnet", [Cli, "train", "match2", "--distributed"], TimeSpan.FromMinutes(1));
        Assert.Equal(2, match.ExitCode);
        Assert.Contains("--distributed applies to 'train vit', not to match2", match.Error);

        static (double, double, double) Losses(JsonElement e) => (e.GetProperty("loss").GetDouble(), e.GetProperty("trainAccuracy").GetDouble(), e.GetProperty("testAccuracy").GetDouble());
    }

    [Fact]
    public void A_failure_one_rank_meets_alone_stops_every_rank_with_one_line()
    {
        // Only rank 0 checks the checkpoint it will write: an existing file without --force fails there alone, and rank 1,
        // waiting for the run, learns of it and leaves quietly instead of hanging.
        string dir = Data.TempDir();
        string existing = Path.Combine(dir, "taken.safetensors");
        File.WriteAllText(existing, "not overwritten");
        var result = MpiJob.Run(2, ["dotnet", Cli, "train", "vit", "--distributed", "--data", DigitsFile.Value, "--threads", "1", "--checkpoint", existing], TimeSpan.FromMinutes(2));
        Assert.True(result.ExitCode > 0, result.ToString()); // failed, and was not killed at the deadline (-1)
        Assert.Single(result.Error.Split('\n'), line => line.Contains("already exists; pass --force", StringComparison.Ordinal));
        Assert.Equal("not overwritten", File.ReadAllText(existing));

        // A file every rank lacks: each rank knows, rank 0 says it once.
        result = MpiJob.Run(2, ["dotnet", Cli, "train", "vit", "--distributed", "--data", Path.Combine(dir, "none.npz"), "--threads", "1", "--checkpoint", Path.Combine(dir, "x.safetensors")], TimeSpan.FromMinutes(2));
        Assert.Equal(3, result.ExitCode);
        Assert.Single(result.Error.Split('\n'), line => line.Contains("none.npz: no such file", StringComparison.Ordinal));
    }

    private static string[] Settings(string name) =>
        ["train", "vit", "--data", DigitsFile.Value, "--epochs", "3", "--batch", "10", "--lr", "0.005", "--seed", "2", "--threads", "1", "--json",
            "--checkpoint", Path.Combine(Data.TempDir(), name + ".safetensors")];

    private static JsonElement Json(MpiResult result, string what)
    {
        Assert.True(result.ExitCode == 0, $"{what}: {result}");
        using var document = JsonDocument.Parse(result.Output);
        return document.RootElement.Clone();
    }

    /// <summary>Every 166th embedded digit (all ten digits, which are sorted), back to 0..255 pixels: images 4, 9, ... are the 12 test images.</summary>
    private static string WriteDigits()
    {
        var digits = MnistData.LoadEmbedded();
        const int count = 60;
        var pixels = new float[count * MnistData.Pixels];
        var labels = new float[count];
        for (int i = 0; i < count; i++)
        {
            int source = i * 166;
            for (int p = 0; p < MnistData.Pixels; p++)
            {
                pixels[i * MnistData.Pixels + p] = MathF.Round((digits.Images[source * MnistData.Pixels + p] * MnistData.Std + MnistData.Mean) * 255);
            }

            labels[i] = digits.Labels[source];
        }

        string path = Path.Combine(Data.TempDir(), "digits.npz");
        NpzFile.Write(path, [new("images", new TensorData<float>(pixels, count, MnistData.Side, MnistData.Side)), new("labels", new TensorData<float>(labels, count))]);
        return path;
    }
}
