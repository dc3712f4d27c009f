using System.Diagnostics;
using System.Runtime.InteropServices;
using FastAttention.Distributed;
using FastAttention.IO;

namespace FastAttention.Cli;

/// <summary>A failure every rank of a distributed run agreed on: each prints the same line (the failing rank's) and exits with its code.</summary>
internal sealed class AgreedFailureException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}

/// <summary>
/// The plumbing of a <c>--distributed</c> command: the communicator (MPI under <c>mpiexec</c>, else one process), collective
/// checks at every point where one rank can fail alone, each rank reading only its rows of the <c>.npy</c> inputs, and one
/// output file written by every rank at its rows' offsets and renamed into place by rank 0 only once all have written.
/// <para>
/// Failures: an expected one (a bad file, a NaN, a bad option) inside <see cref="Agree{T}"/> makes every rank throw the same
/// <see cref="AgreedFailureException"/> ("attend: rank 1 of 2: --q q.npy: ..."), so all leave with one line and the CLI's exit
/// code for it; anything else ends the whole job through <see cref="Communicator.Abort"/>, since its peers may be waiting
/// for a message that will never come. SIGTERM (what mpiexec sends the others when a rank dies) deletes the temp output.
/// </para>
/// </summary>
internal sealed class DistributedRun
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private DistributedRun(Communicator comm, string command)
    {
        Comm = comm;
        Command = command;
    }

    public Communicator Comm { get; }

    /// <summary>The command's name, which every error line starts with.</summary>
    public string Command { get; }

    /// <summary>Rank 0: the one that writes the header, renames the output and prints the summary.</summary>
    public bool IsRoot => Comm.Rank == 0;

    /// <summary>Seconds since the communicator started.</summary>
    public double Seconds => _clock.Elapsed.TotalSeconds;

    /// <summary>Starts the communicator and runs <paramref name="body"/> on this rank; returns its exit code.</summary>
    public static int Run(string command, Func<DistributedRun, int> body)
    {
        using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ => TensorFiles.DeleteTempFilesInFlight());
        using Communicator comm = Communicator.FromEnvironment();
        var run = new DistributedRun(comm, command);
        try
        {
            return body(run);
        }
        catch (DistributedException ex) when (ex.Agreed)
        {
            // The library agreed on it (every rank threw the same one, e.g. ring attention's input checks): leave in order with
            // one line, the exit code of the failing rank's cause where this rank knows it, else bad input (the library's checks
            // are of the data and shapes).
            TensorFiles.DeleteTempFilesInFlight();
            int code = ex.InnerException is { } cause && Cli.Classify(command, cause) is (int c, _) ? c : ExitCode.BadInput;
            throw new AgreedFailureException(code, $"{command}: {ex.Message}");
        }
        catch (Exception ex) when (ex is not AgreedFailureException && comm.Size > 1)
        {
            TensorFiles.DeleteTempFilesInFlight();
            (int code, string line) = Cli.Classify(command, ex) ?? (ExitCode.Failure, $"{ex.GetType().Name}: {ex.Message.ReplaceLineEndings(" ")}");
            comm.Abort($"fastattn {command}: rank {comm.Rank} of {comm.Size}: {WithoutCommand(command, line)}", code);
            throw;
        }
    }

    /// <summary>
    /// Runs <paramref name="step"/> on this rank, then every rank learns whether any failed: if one did, every rank throws the
    /// first failing rank's error. Only expected failures are agreed on; a bug propagates (and <see cref="Run"/> aborts).
    /// </summary>
    public T Agree<T>(Func<T> step)
    {
        T result = default!;
        Exception? failure = null;
        int code = 0;
        try
        {
            result = step();
        }
        catch (Exception ex) when (Cli.Classify(Command, ex) is (int c, string line))
        {
            failure = new BadInputException(WithoutCommand(Command, line));
            code = c;
        }

        int[][] codes = Comm.Allgather<int>([code]);
        try
        {
            Comm.Agree(failure);
        }
        catch (DistributedException ex) when (ex.FailedRank >= 0)
        {
            throw new AgreedFailureException(codes[ex.FailedRank][0], $"{Command}: {ex.Message}");
        }

        return result;
    }

    /// <summary>As <see cref="Agree{T}"/> for a step without a result.</summary>
    public void Agree(Action step) => Agree(() =>
    {
        step();
        return 0;
    });

    /// <summary>The shape in the header of <c>.npy</c> input <paramref name="spec"/> (given as <c>--option</c>); other formats are refused.</summary>
    public static int[] InputShape(string option, string spec)
    {
        string extension = Path.GetExtension(TensorFiles.Split(spec).Path).ToLowerInvariant();
        if (extension != ".npy")
        {
            throw new UsageException($"--{option} {spec}: --distributed reads .npy inputs (each rank seeks to its rows); convert it with 'fastattn convert'");
        }

        if (!File.Exists(spec))
        {
            throw new BadInputException($"--{option} {spec}: file not found");
        }

        return Named(option, () => NumpyFile.ReadShape(spec));
    }

    /// <summary>
    /// Reads this rank's rows <paramref name="shard"/> of the sequence axis of <c>.npy</c> input <paramref name="spec"/>. Unless
    /// <paramref name="nonFinite"/> is null, a NaN or infinity is a bad-input error at its global position, followed by it.
    /// </summary>
    public static TensorData<float> ReadShard(string option, string spec, SequenceShard shard, string? nonFinite)
    {
        Progress.Current.Step($"reading --{option} {spec} (rows of rank {shard.Rank})");
        TensorData<float> rows = Named(option, () => NumpyFile.ReadRows(spec, shard.Ranges));
        if (nonFinite is not null)
        {
            int bad = -1;
            for (int i = 0; i < rows.Data.Length; i++)
            {
                if (!float.IsFinite(rows.Data[i]))
                {
                    bad = i;
                    break;
                }
            }

            if (bad >= 0)
            {
                int d = rows.Shape[^1], localRows = rows.Shape[^2];
                long row = shard.GlobalPosition(bad / d % localRows);
                int[] at = [.. Unflatten(bad / d / localRows, rows.Shape.Take(rows.Shape.Count - 2).ToArray()), (int)row, bad % d];
                string value = float.IsNaN(rows.Data[bad]) ? "NaN" : rows.Data[bad] > 0 ? "+Inf" : "-Inf";
                throw new BadInputException($"--{option} {spec} contains {value} at [{string.Join(", ", at)}] (row {row} of the sequence). {nonFinite}");
            }
        }

        return rows;
    }

    /// <summary>
    /// Writes one float32 <c>.npy</c> of <paramref name="shape"/> to <paramref name="path"/> from every rank's <paramref name="rows"/>
    /// at its <paramref name="ranges"/> of the second-to-last axis: rank 0 creates a temp file beside <paramref name="path"/>, every
    /// rank writes its rows, and after all have (the agreement is the barrier) rank 0 renames it. Any failure deletes it.
    /// </summary>
    public void WriteOutput(string path, bool force, int[] shape, float[] rows, IReadOnlyList<(long Start, long Count)> ranges)
    {
        Progress.Current.Show("writing " + Path.GetFileName(path));
        NumpySliceWriter? owner = null;
        try
        {
            string mine = Agree(() =>
            {
                if (!IsRoot)
                {
                    return string.Empty;
                }

                string temp = TensorFiles.TempBeside(path);
                TensorFiles.TrackTemp(temp);
                owner = NumpySliceWriter.Create(temp, shape);
                return temp;
            });
            string temp = System.Text.Encoding.UTF8.GetString(Comm.Allgather<byte>(System.Text.Encoding.UTF8.GetBytes(mine))[0]);
            TensorFiles.TrackTemp(temp);
            Agree(() =>
            {
                if (owner is not null)
                {
                    owner.WriteRows(rows, ranges);
                    return;
                }

                using NumpySliceWriter writer = Named("out", () => NumpySliceWriter.Open(temp, shape));
                writer.WriteRows(rows, ranges);
            });
            Agree(() =>
            {
                try
                {
                    owner?.Commit(path, force);
                }
                catch (IOException ex) when (!force && File.Exists(path))
                {
                    throw new UsageException($"{path} appeared while computing; pass --force to overwrite it ({ex.Message})");
                }
            });
            TensorFiles.UntrackTemp(temp);
        }
        finally
        {
            owner?.Dispose();
        }
    }

    /// <summary>The sum over ranks of the bytes each has sent so far.</summary>
    public long TotalBytesSent()
    {
        long[] bytes = [Comm.BytesSent];
        Comm.AllreduceSum(bytes);
        return bytes[0];
    }

    private static T Named<T>(string option, Func<T> read)
    {
        try
        {
            return read();
        }
        catch (TensorFileException ex)
        {
            throw new BadInputException($"--{option} {ex.Message}");
        }
    }

    private static int[] Unflatten(int index, int[] dims)
    {
        int[] at = new int[dims.Length];
        for (int a = dims.Length - 1; a >= 0; a--)
        {
            at[a] = index % dims[a];
            index /= dims[a];
        }

        return at;
    }

    private static string WithoutCommand(string command, string line) =>
        line.StartsWith(command + ": ", StringComparison.Ordinal) ? line[(command.Length + 2)..] : line;
}
