using System.Runtime.InteropServices;

namespace FastAttention.Distributed;

/// <summary>
/// MPI's world communicator, over MPI.NET's bindings and MPICH's library. MPI.NET 1.4 is built against MS-MPI's
/// <c>msmpi.dll</c>, whose ABI (integer handles) MPICH shares; this class maps that library name to MPICH's shared object
/// (<c>libmpich.so.12</c>, or the file <c>FASTATTN_MPI_LIBRARY</c> names) with a DLL-import resolver, so no link has to be
/// made by hand. Open MPI (pointer handles) does not fit and is refused by name. Start it once per process, in a process
/// started by <c>mpiexec</c> (MPICH's <c>mpiexec.mpich</c>); <see cref="Communicator.Dispose()"/> finalizes MPI.
/// Transfers are MPI_Isend / MPI_Irecv on pinned memory, completed by MPI_Test polling against the deadline, all on
/// the thread that started MPI (MPI_THREAD_FUNNELED).
/// </summary>
public sealed unsafe class MpiCommunicator : Communicator
{
    /// <summary>The largest single MPI message; bigger transfers go as several messages with the same tag (which MPI keeps in order).</summary>
    private const int ChunkBytes = 1 << 30;

    private static readonly Lock StartLock = new();
    private static string? _libraryPath;
    private static bool _started;

    private readonly MPI.Environment _environment;
    private readonly int _rank;
    private readonly int _size;
    private bool _finalized;

    private MpiCommunicator(MPI.Environment environment)
    {
        _environment = environment;
        Check(MPI.Unsafe.MPI_Comm_rank(MPI.Unsafe.MPI_COMM_WORLD, out int rank), "MPI_Comm_rank");
        Check(MPI.Unsafe.MPI_Comm_size(MPI.Unsafe.MPI_COMM_WORLD, out int size), "MPI_Comm_size");
        _rank = rank;
        _size = size;
    }

    /// <summary>True when this process was started by an MPI process manager (MPICH's sets <c>PMI_RANK</c>).</summary>
    public static bool StartedByMpiexec =>
        Environment.GetEnvironmentVariable("PMI_RANK") is not null || Environment.GetEnvironmentVariable("PMI_FD") is not null
        || Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_RANK") is not null;

    /// <inheritdoc/>
    public override int Rank => _rank;

    /// <inheritdoc/>
    public override int Size => _size;

    /// <inheritdoc/>
    public override string Transport => $"MPI ({Path.GetFileName(_libraryPath)})";

    /// <summary>
    /// Initialises MPI and returns the world communicator.
    /// </summary>
    /// <returns>The world communicator.</returns>
    /// <exception cref="DistributedException">The process was not started by <c>mpiexec</c>, was started by Open MPI's,
    /// MPI was started before in this process, or no MPICH library loads; the message says what to do.</exception>
    public static MpiCommunicator Start()
    {
        lock (StartLock)
        {
            if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_RANK") is not null)
            {
                throw new DistributedException("this process was started by Open MPI's mpiexec, whose ABI MPI.NET cannot use; start it with MPICH's mpiexec.mpich (Debian package mpich)");
            }

            if (!StartedByMpiexec)
            {
                throw new DistributedException("this process was not started by mpiexec (PMI_RANK is not set); run it as 'mpiexec -n P <command>', or use Communicator.FromEnvironment() to run as one process");
            }

            if (_started)
            {
                throw new DistributedException("MPI was already started in this process; MPI can be initialised once per process (keep the first communicator)");
            }

            InstallResolver();
            string[] args = [];
            MPI.Environment environment;
            try
            {
                environment = new MPI.Environment(ref args, MPI.Threading.Funneled);
            }
            catch (DllNotFoundException e)
            {
                throw new DistributedException($"the MPI library could not be loaded ({e.Message}); install MPICH (Debian: apt-get install mpich) or set FASTATTN_MPI_LIBRARY to libmpich.so.12's path", e);
            }

            _started = true;
            return new MpiCommunicator(environment);
        }
    }

    /// <inheritdoc/>
    public override void Abort(string message, int exitCode = 1)
    {
        Console.Error.WriteLine(message);
        Console.Error.Flush();
        MPI.Unsafe.MPI_Abort(MPI.Unsafe.MPI_COMM_WORLD, exitCode);
        Environment.Exit(exitCode); // MPI_Abort does not return; if it ever did, the process still ends.
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (!_finalized)
        {
            _finalized = true;
            _environment.Dispose();
        }
    }

    private protected override Transfer SendBytes<T>(Memory<T> data, long byteCount, int destination, int tag) =>
        new MpiTransfer(this, destination, tag, true, data.Pin(), byteCount);

    private protected override Transfer ReceiveBytes<T>(Memory<T> buffer, long byteCount, int source, int tag) =>
        new MpiTransfer(this, source, tag, false, buffer.Pin(), byteCount);

    /// <summary>Maps MPI.NET's <c>msmpi.dll</c> to MPICH's library, once per process.</summary>
    private static void InstallResolver()
    {
        if (_libraryPath is not null)
        {
            return;
        }

        string[] candidates = Environment.GetEnvironmentVariable("FASTATTN_MPI_LIBRARY") is { Length: > 0 } chosen
            ? [chosen]
            : ["libmpich.so.12", "libmpi.so.12", "libmpich.so"];
        nint handle = 0;
        foreach (string candidate in candidates)
        {
            if (NativeLibrary.TryLoad(candidate, out handle))
            {
                _libraryPath = candidate;
                break;
            }
        }

        if (handle == 0)
        {
            throw new DistributedException($"no MPICH library loads (tried {string.Join(", ", candidates)}); install MPICH (Debian: apt-get install mpich) or set FASTATTN_MPI_LIBRARY to its path");
        }

        NativeLibrary.SetDllImportResolver(typeof(MPI.Unsafe).Assembly, (name, _, _) =>
            name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase) ? handle : 0);
    }

    private static void Check(int code, string call)
    {
        if (code != 0)
        {
            throw new DistributedException($"{call} failed with MPI error {code}");
        }
    }

    /// <summary>One transfer: its pinned buffer and the MPI requests of its chunks.</summary>
    private sealed class MpiTransfer : Transfer
    {
        private readonly System.Buffers.MemoryHandle _pin;
        private readonly int[] _requests;
        private readonly long _byteCount;
        private bool _done;

        public MpiTransfer(MpiCommunicator owner, int peer, int tag, bool isSend, System.Buffers.MemoryHandle pin, long byteCount) : base(owner, peer, tag, isSend)
        {
            _pin = pin;
            _byteCount = byteCount;
            int chunks = (int)Math.Max(1, (byteCount + ChunkBytes - 1) / ChunkBytes);
            _requests = new int[chunks];
            byte* start = (byte*)pin.Pointer;
            for (int c = 0; c < chunks; c++)
            {
                long offset = (long)c * ChunkBytes;
                int count = (int)Math.Min(ChunkBytes, byteCount - offset);
                int request;
                int code = isSend
                    ? MPI.Unsafe.MPI_Isend((nint)(start + offset), count, MPI.Unsafe.MPI_BYTE, peer, tag, MPI.Unsafe.MPI_COMM_WORLD, out request)
                    : MPI.Unsafe.MPI_Irecv((nint)(start + offset), count, MPI.Unsafe.MPI_BYTE, peer, tag, MPI.Unsafe.MPI_COMM_WORLD, out request);
                Check(code, isSend ? "MPI_Isend" : "MPI_Irecv");
                _requests[c] = request;
            }
        }

        public override bool Test()
        {
            if (_done)
            {
                return true;
            }

            for (int c = 0; c < _requests.Length; c++)
            {
                if (_requests[c] == MPI.Unsafe.MPI_REQUEST_NULL)
                {
                    continue;
                }

                Check(MPI.Unsafe.MPI_Test(ref _requests[c], out int flag, out var status), "MPI_Test");
                if (flag == 0)
                {
                    return false;
                }

                if (!IsSend)
                {
                    Check(MPI.Unsafe.MPI_Get_count(ref status, MPI.Unsafe.MPI_BYTE, out int count), "MPI_Get_count");
                    long expected = Math.Min(ChunkBytes, _byteCount - (long)c * ChunkBytes);
                    if (count != expected)
                    {
                        throw new DistributedException(Peer, $"rank {Owner.Rank} of {Owner.Size}: rank {Peer} sent {count} bytes with tag {Tag}, {expected} were expected", null);
                    }
                }

                _requests[c] = MPI.Unsafe.MPI_REQUEST_NULL;
            }

            _done = true;
            _pin.Dispose();
            return true;
        }
    }
}
