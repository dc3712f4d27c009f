using FastAttention.Distributed.Tests.Support;
using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Distributed.Tests;

/// <summary><c>fastattn attend|leverage --distributed</c> alone and under mpiexec -n 2, 3, 4, against the one-process command.</summary>
public class CliDistributedTests
{
    private static string[] Attend(CliJob job, string output, bool causal, params string[] more) =>
        ["attend", "--q", job["q.npy"], "--k", job["k.npy"], "--v", job["v.npy"], "--out", job[output], .. causal ? new[] { "--causal" } : [], .. more];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Alone_attend_distributed_writes_the_bits_of_attend(bool causal)
    {
        var job = new CliJob();
        job.Write("q.npy", 1, 2, 3, 37, 16);
        job.Write("k.npy", 2, 2, 3, 37, 16);
        job.Write("v.npy", 3, 2, 3, 37, 8);

        MpiResult plain = CliJob.Alone(Attend(job, "plain.npy", causal));
        MpiResult distributed = CliJob.Alone(Attend(job, "dist.npy", causal, "--distributed", "--json"));

        Assert.True(plain.ExitCode == 0, plain.ToString());
        Assert.True(distributed.ExitCode == 0, distributed.ToString());
        Assert.Contains("\"ranks\": 1", distributed.Output, StringComparison.Ordinal);
        Assert.Equal(File.ReadAllBytes(job["plain.npy"]), File.ReadAllBytes(job["dist.npy"]));
    }

    /// <summary>
    /// Sequence lengths not divisible by P or 2P, shorter than 2P (ranks whose pieces are empty under zig-zag), and one token;
    /// grouped-query heads and an [n, d] input. Bound: the ring merges per-block softmax partials in float32, so the output may
    /// differ from one-process attention by rounding: |x - ref| &lt;= 2e-5 + 1e-4 |ref| (the exact kernels' tolerance).
    /// </summary>
    [Theory]
    [InlineData(2, false, new[] { 2, 4, 37, 16 }, 2)]
    [InlineData(3, true, new[] { 1, 2, 37, 16 }, 2)]
    [InlineData(4, true, new[] { 1, 2, 5, 8 }, 1)]
    [InlineData(4, false, new[] { 3, 8 }, 0)]
    [InlineData(2, true, new[] { 1, 1, 1, 4 }, 1)]
    public void Attend_under_mpiexec_matches_one_process(int ranks, bool causal, int[] queryShape, int keyHeads)
    {
        var job = new CliJob();
        int[] keyShape = [.. queryShape];
        if (keyHeads > 0)
        {
            keyShape[^3] = keyHeads;
        }

        int[] valueShape = [.. keyShape];
        valueShape[^1] = 5;
        job.Write("q.npy", 11, queryShape);
        job.Write("k.npy", 12, keyShape);
        job.Write("v.npy", 13, valueShape);

        MpiResult plain = CliJob.Alone(Attend(job, "plain.npy", causal));
        MpiResult distributed = CliJob.Ranks(ranks, Attend(job, "dist.npy", causal, "--distributed", "--json"));

        Assert.True(plain.ExitCode == 0, plain.ToString());
        Assert.True(distributed.ExitCode == 0, distributed.ToString());
        Assert.Single(distributed.Output.Split('\n'), line => line.Contains("\"ranks\": " + ranks, StringComparison.Ordinal)); // rank 0 alone prints
        Assert.Empty(distributed.Error.Trim());
        TensorData<float> expected = NumpyFile.ReadFloat32(job["plain.npy"]), actual = NumpyFile.ReadFloat32(job["dist.npy"]);
        Assert.Equal(expected.Shape, actual.Shape);
        for (int i = 0; i < expected.Data.Length; i++)
        {
            double bound = Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(expected.Data[i]));
            Assert.True(Math.Abs(actual.Data[i] - expected.Data[i]) <= bound, $"element {i}: {actual.Data[i]} vs {expected.Data[i]}");
        }

        Assert.Equal(["dist.npy", "k.npy", "plain.npy", "q.npy", "v.npy"], job.Files());
    }

    [Theory]
    [InlineData(2, "--eps", "0.1", "2")]
    [InlineData(3, "--top", "7", "1")]
    [InlineData(4, "--eps", "0.05", "3")]
    public void Leverage_under_mpiexec_selects_the_one_process_set(int ranks, string mode, string value, string p)
    {
        var job = new CliJob();
        job.Write("k.npy", 21, 3, 50, 6);
        string[] Leverage(string output) => ["leverage", "--k", job["k.npy"], "--out", job[output], mode, value, "--p", p];

        MpiResult plain = CliJob.Alone(Leverage("plain.npz"));
        MpiResult alone = CliJob.Alone([.. Leverage("alone.npz"), "--distributed"]);
        MpiResult distributed = CliJob.Ranks(ranks, [.. Leverage("dist.npz"), "--distributed", "--json"]);

        Assert.True(plain.ExitCode == 0, plain.ToString());
        Assert.True(alone.ExitCode == 0, alone.ToString());
        Assert.True(distributed.ExitCode == 0, distributed.ToString());
        Assert.Single(distributed.Output.Split('\n'), line => line.Contains("\"ranks\": " + ranks, StringComparison.Ordinal));
        foreach (string output in new[] { "alone.npz", "dist.npz" })
        {
            Assert.Equal(NpzFile.Names(job["plain.npz"]), NpzFile.Names(job[output]));
            foreach (string head in NpzFile.Names(job["plain.npz"]))
            {
                Assert.Equal(NpzFile.ReadInt64(job["plain.npz"], head).Data, NpzFile.ReadInt64(job[output], head).Data);
            }
        }
    }
}
