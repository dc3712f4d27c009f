using System.Runtime.InteropServices;

namespace FastAttention.Distributed;

/// <summary>
/// Ranks as threads of one process, messages as copies through shared mailboxes: the same algorithms as under MPI,
/// for tests and for trying a distributed method on one machine. <see cref="Run"/> starts the group, runs the body on
/// every rank and rethrows the first failure; a rank that fails or aborts makes every other rank's next wait fail at
/// once (as MPI_Abort ends every process), so a failing body never hangs the group.
/// </summary>
public sealed class LocalCommunicator : Communicator
{
    private readonly Group _group;
    private readonly int _rank;

    private LocalCommunicator(Group group, int rank)
    {
        _group = group;
        _rank = rank;
    }

    /// <inheritdoc/>
    public override int Rank => _rank;

    /// <inheritdoc/>
    public override int Size => _group.Size;

    /// <inheritdoc/>
    public override string Transport => $"{Size} threads of one process";

    /// <summary>
    /// Runs <paramref name="body"/> on <paramref name="size"/> ranks, each on its own thread, and returns every rank's result
    /// (indexed by rank). If any rank throws, the group is broken (the others' waits fail) and the first rank's exception
    /// in time is rethrown, wrapped in a <see cref="DistributedException"/> naming the rank unless it is one already.
    /// </summary>
    /// <typeparam name="T">The body's result.</typeparam>
    /// <param name="size">The number of ranks, at least 1.</param>
    /// <param name="body">The work of one rank.</param>
    /// <param name="timeout">Every wait's deadline; null keeps the default.</param>
    /// <returns>Each rank's result.</returns>
    public static T[] Run<T>(int size, Func<Communicator, T> body, TimeSpan? timeout = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        ArgumentNullException.ThrowIfNull(body);
        var group = new Group(size);
        var results = new T[size];
        var threads = new Thread[size];
        for (int r = 0; r < size; r++)
        {
            int rank = r;
            threads[r] = new Thread(() =>
            {
                using var communicator = new LocalCommunicator(group, rank);
                if (timeout is { } t)
                {
                    communicator.Timeout = t;
                }

                try
                {
                    results[rank] = body(communicator);
                }
                catch (Exception e)
                {
                    group.Fail(rank, e);
                }
            }, 16 << 20)
            { IsBackground = true, Name = $"rank {rank}" };
            threads[r].Start();
        }

        foreach (var thread in threads)
        {
            thread.Join();
        }

        if (group.Failure is { } failure)
        {
            throw failure.Error as DistributedException ?? new DistributedException(failure.Rank, $"rank {failure.Rank} of {size}: {OneLine(failure.Error)}", failure.Error);
        }

        return results;
    }

    /// <inheritdoc/>
    public override void Abort(string message, int exitCode = 1) =>
        throw _group.Fail(_rank, new DistributedException(_rank, message, null));

    private protected override Transfer SendBytes<T>(Memory<T> data, long byteCount, int destination, int tag)
    {
        // A buffered send: the bytes are copied now, so the transfer is complete at once (as MPI's eager sends of small messages).
        byte[] copy = MemoryMarshal.AsBytes(data.Span).ToArray();
        _group.Deliver(_rank, destination, tag, copy);
        return new Done(this, destination, tag);
    }

    private protected override Transfer ReceiveBytes<T>(Memory<T> buffer, long byteCount, int source, int tag) =>
        new Pending<T>(this, source, tag, buffer, byteCount);

    private sealed class Done(Communicator owner, int peer, int tag) : Transfer(owner, peer, tag, true)
    {
        public override bool Test() => true;
    }

    private sealed class Pending<T>(LocalCommunicator owner, int source, int messageTag, Memory<T> buffer, long byteCount) : Transfer(owner, source, messageTag, false)
        where T : unmanaged
    {
        private bool _done;

        public override bool Test()
        {
            if (_done)
            {
                return true;
            }

            byte[]? message = owner._group.TryTake(Peer, owner._rank, Tag, owner._rank);
            if (message is null)
            {
                return false;
            }

            if (message.LongLength != byteCount)
            {
                throw new DistributedException(Peer, $"rank {owner._rank} of {owner.Size}: rank {Peer} sent {message.LongLength} bytes with tag {Tag}, {byteCount} were expected", null);
            }

            message.CopyTo(MemoryMarshal.AsBytes(buffer.Span));
            _done = true;
            return true;
        }
    }

    /// <summary>The mailboxes of one group, one queue per (source, destination, tag), and its first failure.</summary>
    private sealed class Group(int size)
    {
        private readonly Dictionary<(int Source, int Destination, int Tag), Queue<byte[]>> _mail = [];
        private readonly Lock _lock = new();

        public int Size { get; } = size;

        public (int Rank, Exception Error)? Failure { get; private set; }

        public void Deliver(int source, int destination, int tag, byte[] message)
        {
            lock (_lock)
            {
                ThrowIfBroken(source);
                if (!_mail.TryGetValue((source, destination, tag), out var queue))
                {
                    _mail[(source, destination, tag)] = queue = new Queue<byte[]>();
                }

                queue.Enqueue(message);
            }
        }

        public byte[]? TryTake(int source, int destination, int tag, int asker)
        {
            lock (_lock)
            {
                // Messages already delivered are still received after a failure elsewhere only if the failing rank is not the sender.
                if (_mail.TryGetValue((source, destination, tag), out var queue) && queue.Count > 0)
                {
                    return queue.Dequeue();
                }

                ThrowIfBroken(asker);
                return null;
            }
        }

        public Exception Fail(int rank, Exception error)
        {
            lock (_lock)
            {
                Failure ??= (rank, error);
                return error;
            }
        }

        private void ThrowIfBroken(int asker)
        {
            if (Failure is { } failure && failure.Rank != asker)
            {
                throw new DistributedException(failure.Rank, $"rank {asker} of {Size}: stopped because rank {failure.Rank} failed: {OneLine(failure.Error)}", null);
            }
        }
    }
}
