using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace FastAttention.Distributed;

/// <summary>
/// A group of <see cref="Size"/> processes (ranks) that exchange messages: MPI processes started by <c>mpiexec</c>
/// (<see cref="MpiCommunicator"/>), threads of one process (<see cref="LocalCommunicator"/>, for tests and for
/// trying a distributed algorithm on one machine), or one process alone (<see cref="SingleProcess"/>).
/// <para>
/// Point-to-point transfers are non-blocking (<see cref="StartSend{T}"/>, <see cref="StartReceive{T}"/>) so that a
/// rank can compute while its messages travel; the collectives (<see cref="AllreduceSum(Span{double})"/>,
/// <see cref="Allgather{T}"/>, <see cref="Broadcast{T}"/>, <see cref="Barrier"/>, <see cref="Agree"/>) are built
/// on them here, in a fixed order, so that a sum has the same bits on every rank and for every run.
/// </para>
/// <para>
/// Every wait has a deadline (<see cref="Timeout"/>): a peer that died or hangs turns into a
/// <see cref="DistributedException"/> naming the peer and what was awaited, never a hang. <see cref="Abort"/> ends
/// every rank of the group (MPI_Abort under MPI).
/// </para>
/// </summary>
public abstract class Communicator : IDisposable
{
    private long _bytesSent;
    private long _messagesSent;
    private int _collectiveSequence;
    private readonly Array?[] _scratch = new Array?[2];

    /// <summary>This process's (or thread's) rank, 0 to <see cref="Size"/> - 1.</summary>
    public abstract int Rank { get; }

    /// <summary>The number of ranks in the group.</summary>
    public abstract int Size { get; }

    /// <summary>What carries the messages, for logs and benchmark reports (for example "MPI (MPICH 4.0.2)").</summary>
    public abstract string Transport { get; }

    /// <summary>
    /// How long any wait may take before it fails with a <see cref="DistributedException"/>: by default the seconds in the
    /// environment variable <c>FASTATTN_DISTRIBUTED_TIMEOUT</c>, else 10 minutes (long enough for a peer reading or writing
    /// a large file; a peer that dies ends an MPI job at once anyway, as mpiexec kills the rest).
    /// </summary>
    public TimeSpan Timeout { get; set; } = DefaultTimeout;

    /// <summary>The default <see cref="Timeout"/>.</summary>
    private static TimeSpan DefaultTimeout =>
        double.TryParse(Environment.GetEnvironmentVariable("FASTATTN_DISTRIBUTED_TIMEOUT"), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double seconds)
        && seconds > 0 && seconds < 1e7
            ? TimeSpan.FromSeconds(seconds)
            : TimeSpan.FromMinutes(10);

    /// <summary>Bytes this rank has sent since it was created (point-to-point and collectives alike).</summary>
    public long BytesSent => Interlocked.Read(ref _bytesSent);

    /// <summary>Messages this rank has sent since it was created.</summary>
    public long MessagesSent => Interlocked.Read(ref _messagesSent);

    /// <summary>A communicator of one rank: every collective returns its input, and nothing is ever sent.</summary>
    public static Communicator SingleProcess() => new SingleProcessCommunicator();

    /// <summary>
    /// The communicator a command should use: MPI's world when this process was started by <c>mpiexec</c> (MPICH's
    /// process manager sets <c>PMI_RANK</c>), otherwise <see cref="SingleProcess"/>. Under <c>mpiexec</c>, a missing or
    /// unfit MPI library fails with a <see cref="DistributedException"/> that says what to install.
    /// </summary>
    public static Communicator FromEnvironment() => MpiCommunicator.StartedByMpiexec ? MpiCommunicator.Start() : SingleProcess();

    /// <summary>Starts sending <paramref name="data"/> to rank <paramref name="destination"/> with message tag <paramref name="tag"/>; the data must not change until the transfer completes.</summary>
    /// <typeparam name="T">An unmanaged element type (sent as its bytes).</typeparam>
    /// <param name="data">The elements to send.</param>
    /// <param name="destination">The receiving rank (not this one).</param>
    /// <param name="tag">A tag from 0 to 16383 that the receiver names; messages between two ranks with one tag arrive in order.</param>
    /// <returns>The transfer, to wait on.</returns>
    public Transfer StartSend<T>(ReadOnlyMemory<T> data, int destination, int tag) where T : unmanaged
    {
        CheckTag(tag);
        return Post(data, destination, tag);
    }

    /// <summary>A send with any tag (collectives use the upper range).</summary>
    private Transfer Post<T>(ReadOnlyMemory<T> data, int destination, int tag) where T : unmanaged
    {
        CheckPeer(destination, nameof(destination));
        long bytes = (long)data.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>();
        Interlocked.Add(ref _bytesSent, bytes);
        Interlocked.Increment(ref _messagesSent);
        return SendBytes(MemoryMarshal.AsMemory(data), bytes, destination, tag);
    }

    /// <summary>Starts receiving exactly <c>buffer.Length</c> elements from rank <paramref name="source"/> with tag <paramref name="tag"/>; a message of another length fails the wait.</summary>
    /// <typeparam name="T">An unmanaged element type.</typeparam>
    /// <param name="buffer">Where the elements go; untouched by the caller until the transfer completes.</param>
    /// <param name="source">The sending rank (not this one).</param>
    /// <param name="tag">The tag the sender used.</param>
    /// <returns>The transfer, to wait on.</returns>
    public Transfer StartReceive<T>(Memory<T> buffer, int source, int tag) where T : unmanaged
    {
        CheckTag(tag);
        return Take(buffer, source, tag);
    }

    /// <summary>A receive with any tag.</summary>
    private Transfer Take<T>(Memory<T> buffer, int source, int tag) where T : unmanaged
    {
        CheckPeer(source, nameof(source));
        return ReceiveBytes(buffer, (long)buffer.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>(), source, tag);
    }

    /// <summary>Sends and waits (see <see cref="StartSend{T}"/>).</summary>
    /// <typeparam name="T">An unmanaged element type.</typeparam>
    /// <param name="data">The elements.</param>
    /// <param name="destination">The receiving rank.</param>
    /// <param name="tag">The tag.</param>
    public void Send<T>(ReadOnlyMemory<T> data, int destination, int tag) where T : unmanaged => StartSend(data, destination, tag).Wait();

    /// <summary>Receives and waits (see <see cref="StartReceive{T}"/>).</summary>
    /// <typeparam name="T">An unmanaged element type.</typeparam>
    /// <param name="buffer">Where the elements go.</param>
    /// <param name="source">The sending rank.</param>
    /// <param name="tag">The tag.</param>
    public void Receive<T>(Memory<T> buffer, int source, int tag) where T : unmanaged => StartReceive(buffer, source, tag).Wait();

    /// <summary>
    /// Replaces <paramref name="values"/> on every rank by the sum over ranks, added in rank order (rank 0's, plus rank 1's, ...)
    /// at rank 0 and broadcast, so every rank gets the same bits. Every rank must pass the same length.
    /// </summary>
    /// <param name="values">This rank's values in; the sum out.</param>
    public void AllreduceSum(Span<double> values) => AllreduceSum<double>(values);

    /// <summary>As <see cref="AllreduceSum(Span{double})"/>, in float32 (sums rounded to float32 after each addition, in rank order).</summary>
    /// <param name="values">This rank's values in; the sum out.</param>
    public void AllreduceSum(Span<float> values) => AllreduceSum<float>(values);

    /// <summary>As <see cref="AllreduceSum(Span{double})"/>, for 64-bit integers.</summary>
    /// <param name="values">This rank's values in; the sum out.</param>
    public void AllreduceSum(Span<long> values) => AllreduceSum<long>(values);

    /// <summary>The largest value over ranks, on every rank.</summary>
    /// <param name="value">This rank's value.</param>
    /// <returns>The maximum.</returns>
    public double AllreduceMax(double value)
    {
        double[] all = AllgatherFixed(value);
        return all.Max();
    }

    /// <summary>Every rank's <paramref name="local"/>, indexed by rank, on every rank; ranks may pass different lengths.</summary>
    /// <typeparam name="T">An unmanaged element type.</typeparam>
    /// <param name="local">This rank's elements.</param>
    /// <returns>An array per rank (this rank's is a copy).</returns>
    public T[][] Allgather<T>(ReadOnlySpan<T> local) where T : unmanaged
    {
        int tag = NextCollectiveTag();
        var result = new T[Size][];
        if (Size == 1)
        {
            result[0] = local.ToArray();
            return result;
        }

        // Gather to rank 0 (length first, then data), then rank 0 sends every piece to every other rank.
        long[] lengths = new long[Size];
        if (Rank == 0)
        {
            result[0] = local.ToArray();
            for (int r = 1; r < Size; r++)
            {
                long[] length = new long[1];
                Take<long>(length, r, tag).Wait();
                lengths[r] = length[0];
                result[r] = new T[CheckedLength(length[0], r)];
                Take<T>(result[r], r, tag).Wait();
            }

            lengths[0] = local.Length;
            var sends = new List<Transfer>();
            for (int r = 1; r < Size; r++)
            {
                sends.Add(Post<long>(lengths, r, tag));
                for (int s = 0; s < Size; s++)
                {
                    sends.Add(Post<T>(result[s], r, tag));
                }
            }

            Transfer.WaitAll(sends);
        }
        else
        {
            T[] mine = local.ToArray();
            Post<long>(new long[] { mine.Length }, 0, tag).Wait();
            Post<T>(mine, 0, tag).Wait();
            Take<long>(lengths, 0, tag).Wait();
            for (int s = 0; s < Size; s++)
            {
                result[s] = new T[CheckedLength(lengths[s], 0)];
                Take<T>(result[s], 0, tag).Wait();
            }
        }

        return result;
    }

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="data"/> into every other rank's; every rank passes the same length.</summary>
    /// <typeparam name="T">An unmanaged element type.</typeparam>
    /// <param name="data">The root's data in; on the other ranks, the root's data out.</param>
    /// <param name="root">The rank whose data everyone gets.</param>
    public void Broadcast<T>(Memory<T> data, int root) where T : unmanaged
    {
        CheckRank(root, nameof(root));
        int tag = NextCollectiveTag();
        if (Size == 1)
        {
            return;
        }

        if (Rank == root)
        {
            var sends = new List<Transfer>();
            for (int r = 0; r < Size; r++)
            {
                if (r != root)
                {
                    sends.Add(Post<T>(data, r, tag));
                }
            }

            Transfer.WaitAll(sends);
        }
        else
        {
            Take(data, root, tag).Wait();
        }
    }

    /// <summary>Returns once every rank has called it (or fails after <see cref="Timeout"/>).</summary>
    public void Barrier() => AllgatherFixed(0);

    /// <summary>
    /// The collective error check: every rank says whether it failed, and if any did, every rank throws the same
    /// <see cref="DistributedException"/> carrying the first failing rank's message ("rank 1: shard q.npy: ..."), so the
    /// group stops together with one clear error. Call it where a rank might fail alone (after reading its shard, after
    /// checking its inputs) before the next collective.
    /// </summary>
    /// <param name="failure">This rank's failure, or <see langword="null"/> when it is fine.</param>
    /// <exception cref="DistributedException">Some rank failed.</exception>
    public void Agree(Exception? failure)
    {
        // One status byte (1 = failed) before the text, so a failure whose message is empty still counts.
        byte[] local = failure is null ? [0] : [1, .. System.Text.Encoding.UTF8.GetBytes(OneLine(failure))];
        byte[][] all = Allgather<byte>(local);
        for (int r = 0; r < all.Length; r++)
        {
            if (all[r].Length > 0 && all[r][0] == 1)
            {
                string text = System.Text.Encoding.UTF8.GetString(all[r], 1, all[r].Length - 1);
                throw new DistributedException(r, Size == 1 ? text : $"rank {r} of {Size}: {text}", r == Rank ? failure : null) { Agreed = true };
            }
        }
    }

    /// <summary>
    /// Ends every rank of the group at once with exit code <paramref name="exitCode"/>: after printing <paramref name="message"/>
    /// on standard error, MPI_Abort under MPI; the process exits (one rank) or every thread's next wait fails (threads).
    /// </summary>
    /// <param name="message">The one-line reason, printed once by this rank.</param>
    /// <param name="exitCode">The process exit code.</param>
    public abstract void Abort(string message, int exitCode = 1);

    /// <summary>Releases the transport (MPI_Finalize for MPI's world).</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the transport.</summary>
    /// <param name="disposing">True from <see cref="Dispose()"/>.</param>
    protected virtual void Dispose(bool disposing)
    {
    }

    /// <summary>Starts sending <paramref name="byteCount"/> bytes of <paramref name="data"/>; the peer and tag are checked.</summary>
    /// <typeparam name="T">The element type of the memory.</typeparam>
    /// <param name="data">The data.</param>
    /// <param name="byteCount">Its length in bytes.</param>
    /// <param name="destination">The peer.</param>
    /// <param name="tag">The tag.</param>
    /// <returns>The transfer.</returns>
    private protected abstract Transfer SendBytes<T>(Memory<T> data, long byteCount, int destination, int tag) where T : unmanaged;

    /// <summary>Starts receiving exactly <paramref name="byteCount"/> bytes into <paramref name="buffer"/>; the peer and tag are checked.</summary>
    /// <typeparam name="T">The element type of the memory.</typeparam>
    /// <param name="buffer">The buffer.</param>
    /// <param name="byteCount">Its length in bytes.</param>
    /// <param name="source">The peer.</param>
    /// <param name="tag">The tag.</param>
    /// <returns>The transfer.</returns>
    private protected abstract Transfer ReceiveBytes<T>(Memory<T> buffer, long byteCount, int source, int tag) where T : unmanaged;

    /// <summary>The exception's message on one line, without the stack.</summary>
    internal static string OneLine(Exception failure) => failure.Message.Length > 0 ? failure.Message.ReplaceLineEndings(" ") : failure.GetType().Name;

    private void AllreduceSum<T>(Span<T> values) where T : unmanaged, System.Numerics.IAdditionOperators<T, T, T>, System.Numerics.IAdditiveIdentity<T, T>
    {
        int tag = NextCollectiveTag();
        if (Size == 1)
        {
            return;
        }

        // Reused buffers: fresh 64 MiB arrays every step (gradients) cost page faults and collections that took longer than the messages.
        Memory<T> buffer = Scratch<T>(0, values.Length);
        values.CopyTo(buffer.Span);
        if (Rank == 0)
        {
            Memory<T> incoming = Scratch<T>(1, values.Length);
            for (int r = 1; r < Size; r++)
            {
                Take(incoming, r, tag).Wait();
                System.Numerics.Tensors.TensorPrimitives.Add<T>(buffer.Span, incoming.Span, buffer.Span);
            }

            var sends = new List<Transfer>();
            for (int r = 1; r < Size; r++)
            {
                sends.Add(Post<T>(buffer, r, tag));
            }

            Transfer.WaitAll(sends);
        }
        else
        {
            Post<T>(buffer, 0, tag).Wait();
            Take(buffer, 0, tag).Wait();
        }

        buffer.Span.CopyTo(values);
    }

    /// <summary>A reusable buffer of <paramref name="length"/> elements in slot <paramref name="slot"/> (0 or 1), grown when too small or of another type.</summary>
    private Memory<T> Scratch<T>(int slot, int length) where T : unmanaged
    {
        if (_scratch[slot] is not T[] array || array.Length < length)
        {
            _scratch[slot] = array = GC.AllocateUninitializedArray<T>(length, pinned: true);
        }

        return array.AsMemory(0, length);
    }

    private T[] AllgatherFixed<T>(T value) where T : unmanaged
    {
        T[][] all = Allgather<T>([value]);
        return all.Select(a => a.Length == 1 ? a[0] : throw new DistributedException(-1, "a rank sent a malformed collective message", null)).ToArray();
    }

    /// <summary>The largest point-to-point tag a caller may use.</summary>
    public const int MaxTag = 16383;

    /// <summary>Collectives use tags 16384 to 32767 (cycling; MPI guarantees tags up to 32767), callers 0 to <see cref="MaxTag"/>, so the two never mix.</summary>
    private int NextCollectiveTag() => MaxTag + 1 + (_collectiveSequence++ & MaxTag);

    private int CheckedLength(long length, int peer) =>
        length >= 0 && length <= Array.MaxLength ? (int)length : throw new DistributedException(peer, $"rank {peer} announced a message of {length} elements", null);

    private void CheckPeer(int peer, string name)
    {
        CheckRank(peer, name);
        if (peer == Rank)
        {
            throw new ArgumentOutOfRangeException(name, peer, $"{name} is this rank ({Rank}); a rank does not message itself.");
        }
    }

    private void CheckRank(int rank, string name)
    {
        if ((uint)rank >= (uint)Size)
        {
            throw new ArgumentOutOfRangeException(name, rank, $"{name} must be a rank from 0 to {Size - 1}.");
        }
    }

    private static void CheckTag(int tag)
    {
        if ((uint)tag > MaxTag)
        {
            throw new ArgumentOutOfRangeException(nameof(tag), tag, $"tag must be from 0 to {MaxTag}.");
        }
    }
}

/// <summary>A message on its way: wait for it, or ask whether it has arrived.</summary>
public abstract class Transfer
{
    private protected Transfer(Communicator owner, int peer, int tag, bool isSend)
    {
        Owner = owner;
        Peer = peer;
        Tag = tag;
        IsSend = isSend;
    }

    /// <summary>How long <see cref="Wait"/> polls without sleeping.</summary>
    private static readonly TimeSpan BusyPollTime = TimeSpan.FromSeconds(5);

    /// <summary>The rank on the other end.</summary>
    public int Peer { get; }

    /// <summary>The message tag.</summary>
    public int Tag { get; }

    /// <summary>True for a send, false for a receive.</summary>
    public bool IsSend { get; }

    private protected Communicator Owner { get; }

    /// <summary>True once the transfer has completed (its buffer may be reused); makes progress on the transport.</summary>
    /// <exception cref="DistributedException">The transfer failed (a message of the wrong length, a peer that aborted).</exception>
    public abstract bool Test();

    /// <summary>
    /// Waits until the transfer completes, at most the communicator's <see cref="Communicator.Timeout"/>. It polls
    /// <see cref="Test"/> without sleeping for the first seconds, because MPICH moves a large message only while some MPI
    /// call runs (a poll every millisecond would drag a 64 MiB message out to a second); after that it sleeps a
    /// millisecond between polls, so a rank waiting on a slow peer does not hold a core.
    /// </summary>
    /// <exception cref="DistributedException">It failed or timed out; the message names the peer, the tag and the direction.</exception>
    public void Wait()
    {
        long start = Stopwatch.GetTimestamp();
        while (!Test())
        {
            TimeSpan waited = Stopwatch.GetElapsedTime(start);
            if (waited > Owner.Timeout)
            {
                throw TimedOut();
            }

            if (waited < BusyPollTime)
            {
                Thread.Yield();
            }
            else
            {
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>Waits for every transfer (at most the timeout each).</summary>
    /// <param name="transfers">The transfers.</param>
    public static void WaitAll(IEnumerable<Transfer> transfers)
    {
        foreach (var transfer in transfers)
        {
            transfer.Wait();
        }
    }

    /// <summary>The timeout error.</summary>
    private protected DistributedException TimedOut() => new(Peer,
        $"rank {Owner.Rank} of {Owner.Size}: no {(IsSend ? "delivery to" : "message from")} rank {Peer} (tag {Tag}) within {Owner.Timeout.TotalSeconds:0.#} s; that rank may have failed or stopped",
        null);
}

/// <summary>A rank of a distributed computation failed, timed out or aborted; <see cref="FailedRank"/> says which (-1 when unknown).</summary>
public sealed class DistributedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DistributedException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">The one-line message.</param>
    public DistributedException(string message) : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">The one-line message.</param>
    /// <param name="innerException">The local cause.</param>
    public DistributedException(string message, Exception? innerException) : base(message, innerException)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="failedRank">The rank that failed, or -1.</param>
    /// <param name="message">The one-line message.</param>
    /// <param name="innerException">The local cause, on the rank that failed.</param>
    public DistributedException(int failedRank, string message, Exception? innerException) : base(message, innerException) => FailedRank = failedRank;

    /// <summary>The rank that failed first, or -1 when unknown.</summary>
    public int FailedRank { get; } = -1;

    /// <summary>
    /// True when this exception came out of <see cref="Communicator.Agree"/>: every rank of the group threw the same one, so
    /// the group can stop in order (no abort needed); false for a timeout or a local failure its peers may not know of.
    /// </summary>
    public bool Agreed { get; init; }
}

/// <summary>One rank alone.</summary>
internal sealed class SingleProcessCommunicator : Communicator
{
    public override int Rank => 0;

    public override int Size => 1;

    public override string Transport => "single process";

    public override void Abort(string message, int exitCode = 1)
    {
        Console.Error.WriteLine(message);
        Environment.Exit(exitCode);
    }

    private protected override Transfer SendBytes<T>(Memory<T> data, long byteCount, int destination, int tag) => throw new UnreachableException();

    private protected override Transfer ReceiveBytes<T>(Memory<T> buffer, long byteCount, int source, int tag) => throw new UnreachableException();
}
