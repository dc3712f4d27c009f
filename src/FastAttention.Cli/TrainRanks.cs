using System.Runtime.ExceptionServices;
using FastAttention.Distributed;
using FastAttention.Training;

namespace FastAttention.Cli;

/// <summary>The trainer's gradient sum over a communicator's ranks: rank-order, so every rank gets the same bits.</summary>
internal sealed class CommunicatorReducer(Communicator communicator) : IGradientReducer
{
    public int Rank => communicator.Rank;

    public int Size => communicator.Size;

    public void SumInPlace(Span<float> values) => communicator.AllreduceSum(values);
}

/// <summary>
/// The processes of <c>train vit</c>: this process alone, or, with <c>--distributed</c>, the ranks mpiexec started.
/// Rank 0 prints and saves; a step where one rank could fail alone (reading its files, rank 0 saving) runs through
/// <see cref="Together{T}"/>, so every rank stops with the same error instead of waiting for a peer that left.
/// </summary>
internal sealed class TrainRanks
{
    private readonly Communicator? communicator;

    private TrainRanks(Communicator? communicator)
    {
        this.communicator = communicator;
        Reducer = communicator is { Size: > 1 } ? new CommunicatorReducer(communicator) : null;
    }

    /// <summary>This process alone (no <c>--distributed</c>).</summary>
    public static TrainRanks Alone { get; } = new(null);

    public IGradientReducer? Reducer { get; }

    public int Rank => communicator?.Rank ?? 0;

    public int Size => communicator?.Size ?? 1;

    /// <summary>"2 ranks (MPI (libmpich.so.12))", for the header line; empty alone.</summary>
    public string Description => Size > 1 ? $", {Size} ranks ({communicator!.Transport})" : string.Empty;

    /// <summary>A failure passed through <see cref="Together{T}"/>: every rank knows of it and stops.</summary>
    private bool Agreed { get; set; }

    /// <summary>
    /// Runs <paramref name="body"/> on the communicator's ranks (<c>--distributed</c>): rank 0's output goes to
    /// <paramref name="stdout"/>, the others' nowhere. Errors every rank shares are printed by rank 0 alone (the others
    /// exit with the same code quietly); anything else one rank meets alone ends the whole job (MPI_Abort) with its message.
    /// </summary>
    public static int Run(Func<TextWriter, TrainRanks, int> body, TextWriter stdout)
    {
        using var communicator = Communicator.FromEnvironment();
        var ranks = new TrainRanks(communicator);
        try
        {
            return body(ranks.Rank == 0 ? stdout : TextWriter.Null, ranks);
        }
        catch (Exception e) when (ranks.Size > 1)
        {
            if (!ranks.Agreed && e is not (UsageException or BadInputException))
            {
                communicator.Abort($"fastattn: train: rank {ranks.Rank} of {ranks.Size}: {e.Message.ReplaceLineEndings(" ")}", ExitCode.Failure);
            }

            if (ranks.Rank == 0)
            {
                throw;
            }

            return e switch
            {
                UsageException => ExitCode.Usage,
                BadInputException => ExitCode.BadInput,
                _ => ExitCode.Failure,
            };
        }
    }

    /// <summary>
    /// Runs a step every rank takes but any one may fail alone; then the ranks compare notes. When some rank failed,
    /// every rank throws: the failing one its own exception, the others a <see cref="BadInputException"/> naming the rank,
    /// after <paramref name="discard"/> releases what their step made.
    /// </summary>
    public T Together<T>(Func<T> step, Action<T>? discard = null)
    {
        if (communicator is not { Size: > 1 })
        {
            return step();
        }

        T result = default!;
        Exception? failure = null;
        try
        {
            result = step();
        }
        catch (Exception e)
        {
            failure = e;
        }

        try
        {
            communicator.Agree(failure);
        }
        catch (DistributedException agreed)
        {
            Agreed = true;
            if (failure is not null)
            {
                ExceptionDispatchInfo.Throw(failure);
            }

            discard?.Invoke(result);
            throw new BadInputException(agreed.Message);
        }

        return result;
    }

    /// <summary>Every rank must have loaded the same digits, or their batches would not be slices of one global batch.</summary>
    public void RequireSameData(MnistData data)
    {
        if (communicator is not { Size: > 1 })
        {
            return;
        }

        byte[][] all = communicator.Allgather<byte>(System.Text.Encoding.UTF8.GetBytes(data.Fingerprint));
        string mine = data.Fingerprint;
        for (int r = 0; r < all.Length; r++)
        {
            string theirs = System.Text.Encoding.UTF8.GetString(all[r]);
            if (theirs != mine)
            {
                Agreed = true;
                throw new BadInputException($"train: --distributed: rank {r} loaded other digits ({theirs}) than rank {Rank} ({mine}); every rank needs the same --data");
            }
        }
    }

    /// <summary>The libtorch threads per rank without --threads: the cores shared among the ranks on this machine (MPICH says how many).</summary>
    public int DefaultThreads()
    {
        int local = int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALNRANKS"), System.Globalization.CultureInfo.InvariantCulture, out int n) && n > 0 ? n : Size;
        return Math.Max(1, Environment.ProcessorCount / local);
    }
}
