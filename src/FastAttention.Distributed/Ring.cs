using System.Diagnostics;

namespace FastAttention.Distributed;

/// <summary>
/// The key/value blocks going round the ring, double-buffered: at each step the block held is sent to rank r + 1 and the
/// next one received from rank r - 1 while the step's work runs, and the step's times and bytes are recorded.
/// </summary>
internal sealed class Ring
{
    private readonly Communicator _comm;
    private readonly RingPlan _plan;
    private readonly bool _onCallingThread;
    private readonly int _tag;
    private readonly long[] _bytes;
    private readonly double[] _compute;
    private readonly double[] _wait;
    private float[] _next;

    public Ring(Communicator comm, RingPlan plan, bool onCallingThread, int tag)
    {
        _comm = comm;
        _plan = plan;
        _onCallingThread = onCallingThread;
        _tag = tag;
        Steps = comm.Size;
        _bytes = new long[Steps];
        _compute = new double[Steps];
        _wait = new double[Steps];
        Current = new float[plan.MaxBlock];
        _next = comm.Size > 1 ? new float[plan.MaxBlock] : [];
    }

    public int Steps { get; }

    /// <summary>The block held at the current step (this rank's own before step 0).</summary>
    public float[] Current { get; private set; }

    public int Successor => (_comm.Rank + 1) % _comm.Size;

    public int Predecessor => (_comm.Rank - 1 + _comm.Size) % _comm.Size;

    /// <summary>The rank whose block is held at <paramref name="step"/>.</summary>
    public int Source(int step) => (_comm.Rank - step + _comm.Size) % _comm.Size;

    /// <summary>Counts bytes sent outside the key/value block at <paramref name="step"/> (the backward's gradients).</summary>
    public void AddBytes(int step, long bytes) => _bytes[step] += bytes;

    /// <summary>
    /// Runs one step: posts the block's send and the next block's receive (none at the last step), runs <paramref name="work"/>
    /// on the held block while keeping those and <paramref name="otherTransfers"/> moving, waits for all, then makes the
    /// received block current.
    /// </summary>
    public void Step(int step, Action<float[]> work, IEnumerable<Transfer>? otherTransfers = null)
    {
        var transfers = new List<Transfer>(otherTransfers ?? []);
        if (step < Steps - 1)
        {
            int sending = _plan.BlockLength(_plan.Rows[Source(step)]);
            int receiving = _plan.BlockLength(_plan.Rows[Source(step + 1)]);
            transfers.Add(_comm.StartReceive<float>(_next.AsMemory(0, receiving), Predecessor, _tag));
            transfers.Add(_comm.StartSend<float>(Current.AsMemory(0, sending), Successor, _tag));
            _bytes[step] += sending * sizeof(float);
        }

        // After a failure this rank does no more work but keeps the blocks moving, so its peers finish the ring and learn of
        // the failure at AgreeOnFailure instead of waiting out the timeout.
        float[] held = Current;
        (_compute[step], _wait[step], Exception? failure) = Overlap(Failure is null ? () => work(held) : () => { }, transfers, _onCallingThread);
        Failure ??= failure;
        if (step < Steps - 1)
        {
            (Current, _next) = (_next, Current);
        }
    }

    /// <summary>Waits for transfers still travelling after the last step, counting the time as the last step's wait.</summary>
    public void FinishWaiting(List<Transfer> transfers)
    {
        var clock = Stopwatch.StartNew();
        Transfer.WaitAll(transfers);
        _wait[Steps - 1] += clock.Elapsed.TotalSeconds;
    }

    /// <summary>The first exception a step's work threw on this rank (its later steps did no work), or null.</summary>
    public Exception? Failure { get; private set; }

    /// <summary>After the last step: if any rank's work failed, every rank throws the same agreed error (the ring's transfers are all complete by now).</summary>
    public void AgreeOnFailure() => _comm.Agree(Failure);

    public RingRun Result(double flops, double totalSeconds) => new(Steps, _bytes, _compute, _wait, flops, totalSeconds);

    /// <summary>
    /// Runs <paramref name="work"/> while <paramref name="transfers"/> travel, then waits for them: returns the work's time and
    /// the wait after it. MPICH moves a large (rendezvous) message only inside MPI calls, so unless told otherwise the work
    /// runs on a worker thread while this thread, the one MPI belongs to, tests the transfers about every millisecond.
    /// </summary>
    public static (double Compute, double Wait, Exception? Failure) Overlap(Action work, List<Transfer> transfers, bool onCallingThread)
    {
        var clock = Stopwatch.StartNew();
        Exception? failure = null;
        if (onCallingThread || transfers.Count == 0)
        {
            try
            {
                work();
            }
            catch (Exception e) when (e is not DistributedException)
            {
                failure = e;
            }
        }
        else
        {
            var task = Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            var pending = new List<Transfer>(transfers);
            while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(pending.Count > 0 ? 1 : System.Threading.Timeout.Infinite))
            {
                pending.RemoveAll(t => t.Test());
            }

            failure = task.Exception?.InnerException;
        }

        // The transfers complete whatever the work did: a buffer must not be reused, nor the ring left, with a message in flight.
        double compute = clock.Elapsed.TotalSeconds;
        Transfer.WaitAll(transfers);
        return (compute, clock.Elapsed.TotalSeconds - compute, failure);
    }
}
