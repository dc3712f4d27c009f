using FastAttention.Distributed.Tests.Support;
using FastAttention.IO;
using Xunit.Abstractions;

namespace FastAttention.Distributed.Tests;

/// <summary>
/// Faults of <c>fastattn attend --distributed</c> under mpiexec: a bad shard, a NaN in one rank's rows, a missing file and a
/// rank killed mid-run each end EVERY rank, well before the job's deadline, with one clear error and a non-zero exit, and
/// leave no file at --out and no temp file beside it.
/// </summary>
public class CliFaultTests(ITestOutputHelper log)
{
    /// <summary>A job that ends on its own ends in seconds; the deadline is minutes. Twenty times the observed few seconds.</summary>
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(60);

    private static CliJob Inputs(int n = 37)
    {
        var job = new CliJob();
        job.Write("q.npy", 1, 1, 2, n, 16);
        job.Write("k.npy", 2, 1, 2, n, 16);
        job.Write("v.npy", 3, 1, 2, n, 8);
        return job;
    }

    private static string[] Attend(CliJob job, string key) =>
        ["attend", "--distributed", "--q", job["q.npy"], "--k", key, "--v", job["v.npy"], "--out", job["out.npy"]];

    /// <summary>The job ended by itself, promptly, with <paramref name="exitCode"/>, every rank printing <paramref name="expected"/>; no output.</summary>
    private void AssertAgreedFailure(MpiResult result, CliJob job, int ranks, int exitCode, string expected)
    {
        log.WriteLine($"ended in {result.Elapsed.TotalSeconds:0.00} s with exit {result.ExitCode}: {result.Error.Trim().Split('\n')[0]}");
        Assert.True(result.Elapsed < Prompt, result.ToString());
        Assert.True(result.ExitCode == exitCode, result.ToString());
        string[] lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Equal(ranks, lines.Length);
        Assert.All(lines, line => Assert.Equal(lines[0], line));
        Assert.StartsWith("fastattn attend: ", lines[0], StringComparison.Ordinal);
        Assert.Contains(expected, lines[0], StringComparison.Ordinal);
        Assert.Empty(result.Output.Trim());
        Assert.DoesNotContain(job.Files(), name => name.Contains("out.npy", StringComparison.Ordinal));
    }

    [Fact]
    public void A_shard_of_the_wrong_shape_fails_every_rank_with_one_line()
    {
        CliJob job = Inputs();
        string bad = job.Write("bad.npy", 2, 1, 2, 36, 16);
        MpiResult result = CliJob.Ranks(3, Attend(job, bad));
        AssertAgreedFailure(result, job, 3, 3, "rank 0 of 3: --k has shape [1, 2, 36, 16] but --v has shape [1, 2, 37, 8]");
    }

    [Fact]
    public void A_truncated_shard_fails_every_rank_naming_the_file()
    {
        CliJob job = Inputs();
        byte[] bytes = File.ReadAllBytes(job["k.npy"]);
        File.WriteAllBytes(job["cut.npy"], bytes[..^64]);
        MpiResult result = CliJob.Ranks(2, Attend(job, job["cut.npy"]));
        AssertAgreedFailure(result, job, 2, 3, $"rank 0 of 2: --k {job["cut.npy"]} at byte");
    }

    [Fact]
    public void A_NaN_in_one_ranks_rows_fails_every_rank_naming_that_rank_and_the_global_row()
    {
        CliJob job = Inputs();
        TensorData<float> k = NumpyFile.ReadFloat32(job["k.npy"]);
        k.Data[(30 * 16) + 5] = float.NaN; // row 30 of head 0: rank 2 of 3 holds rows 24..36
        NumpyFile.Write(job["nan.npy"], k);
        MpiResult result = CliJob.Ranks(3, Attend(job, job["nan.npy"]));
        AssertAgreedFailure(result, job, 3, 3, $"rank 2 of 3: --k {job["nan.npy"]} contains NaN at [0, 0, 30, 5] (row 30 of the sequence)");
    }

    [Fact]
    public void A_missing_file_fails_every_rank()
    {
        CliJob job = Inputs();
        MpiResult result = CliJob.Ranks(4, Attend(job, job["absent.npy"]));
        AssertAgreedFailure(result, job, 4, 3, $"rank 0 of 4: --k {job["absent.npy"]}: file not found");
    }

    [Fact]
    public void A_non_npy_input_is_a_usage_error_on_every_rank()
    {
        CliJob job = Inputs();
        NpzFile.Write(job["k.npz"], [new("k", NumpyFile.ReadFloat32(job["k.npy"]))]);
        MpiResult result = CliJob.Ranks(2, Attend(job, job["k.npz"]));
        AssertAgreedFailure(result, job, 2, 2, "--distributed reads .npy inputs");
    }

    /// <summary>
    /// Two fastattn ranks and a third, the worker's "die" scenario, in one MPI world: the third joins, waits 1.5 s (the others
    /// are inside their run, waiting on its part of the first collective check) and kills itself with SIGKILL. mpiexec then
    /// ends the others; nothing may be written, and the job must not wait for the communicator's 2-minute timeout.
    /// </summary>
    [Fact]
    public void A_killed_rank_ends_every_rank_and_leaves_no_output()
    {
        CliJob job = Inputs(3000);
        MpiResult result = CliJob.Ranks(2, Attend(job, job["k.npy"]), ":", "-n", "1", "dotnet", MpiJob.WorkerPath, "die", "1500");
        log.WriteLine($"ended in {result.Elapsed.TotalSeconds:0.00} s with exit {result.ExitCode}");
        Assert.True(result.Elapsed < Prompt, result.ToString());
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("Killed (signal 9)", result.Output + result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("rank 2 of 3: ok", result.Output, StringComparison.Ordinal);
        Assert.DoesNotContain(job.Files(), name => name.Contains("out.npy", StringComparison.Ordinal));
    }
}
