namespace FastAttention.Lab;

/// <summary>What to time: a method of <see cref="MethodTable"/> on a shape, on given inputs or seeded random ones.</summary>
/// <param name="Method">A <see cref="MethodTable"/> name.</param>
/// <param name="Shape">The dimensions.</param>
public sealed record BenchmarkRequest(string Method, AttentionShape Shape)
{
    /// <summary>The method's settings; <see cref="MethodSettings.Threads"/> 0 means all cores.</summary>
    public MethodSettings Settings { get; init; } = new();

    /// <summary>The inputs; null: uniform in [-1, 1] from <see cref="InputSeed"/> (tensor methods draw K2, V2 from the seed + 7).</summary>
    public MethodInputs? Inputs { get; init; }

    /// <summary>Seed of the random inputs.</summary>
    public int InputSeed { get; init; } = 1;

    /// <summary>Timed runs; null: as many as fit in about 2 s, at least 3, at most 50.</summary>
    public int? Repeats { get; init; }

    /// <summary>Also read the same inputs with a plain summing loop, timed the same way, and compare the method's read rate with it.</summary>
    public bool MeasureBandwidth { get; init; }

    /// <summary>
    /// Time the method's training forward and backward together (<see cref="MethodEntry.Backward"/>) instead of its forward:
    /// <see cref="BenchmarkResult.MedianSeconds"/> and <see cref="BenchmarkResult.Flops"/> are of the pair, and
    /// <see cref="BenchmarkResult.Backward"/> has the backward alone. dO is uniform in [-1, 1] from <see cref="InputSeed"/> + 13.
    /// </summary>
    public bool Backward { get; init; }

    /// <summary>
    /// Exact method only: store keys and values in this type and time the typed call
    /// (<see cref="ExactAttention.Compute(ReadOnlySpan{float}, KvTensor, KvTensor, AttentionShape, Span{float}, ExactAttentionOptions)"/>).
    /// The keys and values are <see cref="KvKeys"/> and <see cref="KvValues"/> when given, otherwise <see cref="Inputs"/> (or the
    /// random ones) rounded into the type. Null: the float32 call of before.
    /// </summary>
    public KvElementType? KvType { get; init; }

    /// <summary>With <see cref="KvType"/>: keys already in the type (read from a file, say), <c>[batch, kvHeads, nk, d]</c>.</summary>
    public KvTensor? KvKeys { get; init; }

    /// <summary>With <see cref="KvType"/>: values already in the type, <c>[batch, kvHeads, nk, dv]</c>.</summary>
    public KvTensor? KvValues { get; init; }
}

/// <summary>Keys and values stored in a low-precision type for a benchmark (<see cref="BenchmarkRequest.KvType"/>).</summary>
/// <param name="Type">The storage type.</param>
/// <param name="Bytes">Bytes of the stored keys and values, q8's scales included: what the typed call reads of them.</param>
/// <param name="BitsPerValue">Bits a stored value, q8's scales included.</param>
/// <param name="Bound">The storage's error bound from the last run (<see cref="AttentionRun.KvBound"/>).</param>
public sealed record KvFigure(KvElementType Type, double Bytes, double BitsPerValue, KvErrorBound? Bound);

/// <summary>The backward pass alone, from the same timed runs as the forward-and-backward pair (<see cref="BenchmarkRequest.Backward"/>).</summary>
/// <param name="MedianSeconds">The median of the backward's times.</param>
/// <param name="MinSeconds">The fastest backward.</param>
/// <param name="ForwardFlops">The training forward's flops.</param>
/// <param name="BackwardFlops">The backward's flops (<see cref="FlopCount.ExactAttentionBackward"/> for exact and power attention).</param>
/// <param name="PeakGflops">The FMA peak measured in the same run.</param>
/// <param name="Kernel">The kernel the backward ran on.</param>
public sealed record BackwardFigure(double MedianSeconds, double MinSeconds, double ForwardFlops, double BackwardFlops, double PeakGflops, string Kernel)
{
    /// <summary>The backward's flops over its median time, in GFLOP/s.</summary>
    public double Gflops => BackwardFlops / MedianSeconds / 1e9;

    /// <summary><see cref="Gflops"/> as a percentage of <see cref="PeakGflops"/>.</summary>
    public double PercentOfPeak => 100 * Gflops / PeakGflops;
}

/// <summary>The method's input read rate against a read rate measured in the same run.</summary>
/// <param name="PlainReadGBps">A plain sum over the same input arrays, on the same threads, median of the same number of passes (cached data counts as for the method).</param>
/// <param name="MethodGBps">The method's input bytes over its median time.</param>
public sealed record BandwidthFigure(double PlainReadGBps, double MethodGBps)
{
    /// <summary>
    /// The read rate the percentage is against: the faster of the plain read and the method itself (a method that
    /// reads its inputs faster than the plain loop has shown that rate, so it is the measured bandwidth).
    /// </summary>
    public double ReferenceGBps => Math.Max(PlainReadGBps, MethodGBps);

    /// <summary>Which read set <see cref="ReferenceGBps"/>: <c>plain-read</c> or <c>method</c>.</summary>
    public string Reference => MethodGBps > PlainReadGBps ? "method" : "plain-read";

    /// <summary>The method's read rate as a percentage of <see cref="ReferenceGBps"/>: at most 100 by construction.</summary>
    public double PercentOfBandwidth => ReferenceGBps > 0 ? Math.Min(100, 100 * MethodGBps / ReferenceGBps) : double.NaN; // Min: the last bit of rounding when the two rates nearly agree

    /// <summary>The figure for <paramref name="bytes"/> read by the method in <paramref name="methodSeconds"/> and by the plain loop in <paramref name="plainSeconds"/>.</summary>
    /// <param name="bytes">Input bytes per run.</param>
    /// <param name="methodSeconds">The method's median time.</param>
    /// <param name="plainSeconds">The plain read's median time.</param>
    /// <returns>The figure.</returns>
    public static BandwidthFigure Of(double bytes, double methodSeconds, double plainSeconds) => new(bytes / plainSeconds / 1e9, bytes / methodSeconds / 1e9);

    /// <summary>
    /// The machine's read bandwidth measured in the same process: a buffer of at least 1 GiB, far past the caches, summed
    /// by every core (<see cref="MemoryBandwidth.Measure"/>); null when not measured. Against it the method's rate says how
    /// much of the machine a memory-bound call (decoding) uses, which the same-size plain read cannot once the inputs fit in cache.
    /// </summary>
    public double? MachineReadGBps { get; init; }

    /// <summary>The method's read rate as a percentage of <see cref="MachineReadGBps"/> (above 100 when the inputs are served from cache); null when not measured.</summary>
    public double? PercentOfMachine => MachineReadGBps is double machine && machine > 0 ? 100 * MethodGBps / machine : null;
}

/// <summary>One timed method.</summary>
/// <param name="Method">The method's name.</param>
/// <param name="Kernel">The kernel or method label that ran.</param>
/// <param name="Shape">The dimensions.</param>
/// <param name="Causal">Whether the causal mask was on.</param>
/// <param name="Threads">Worker threads.</param>
/// <param name="Repeats">Timed runs (after one warm-up call).</param>
/// <param name="FirstCallSeconds">The warm-up call (JIT, buffer pools, caches).</param>
/// <param name="MedianSeconds">The median of the timed runs (with <see cref="BenchmarkRequest.Backward"/>, of forward and backward together).</param>
/// <param name="MinSeconds">The fastest timed run.</param>
/// <param name="Flops">The method's own flop count (<see cref="MethodEntry.Flops"/>; with <see cref="BenchmarkRequest.Backward"/>, forward and backward).</param>
/// <param name="ExactEquivalentFlops">Approximate methods: the exact computation's flops (with <see cref="BenchmarkRequest.Backward"/>, plus the exact backward's); null otherwise.</param>
/// <param name="PeakGflops">This machine's FMA peak on <paramref name="Threads"/> threads, measured in the same run.</param>
/// <param name="InputBytes">Bytes of the inputs (Q, K, V; tensor methods: both K and V; with <see cref="BenchmarkRequest.KvType"/>, K and V as stored).</param>
/// <param name="Bandwidth">The read-rate comparison, when requested.</param>
/// <param name="PeakWorkingSetBytes">The process's peak working set after the runs.</param>
/// <param name="Run">The last run's report (certificate, sketch, kept keys).</param>
/// <param name="Output">The last run's output.</param>
/// <param name="Machine">The CPU and time of the measurement.</param>
public sealed record BenchmarkResult(string Method, string Kernel, AttentionShape Shape, bool Causal, int Threads, int Repeats,
    double FirstCallSeconds, double MedianSeconds, double MinSeconds, double Flops, double? ExactEquivalentFlops, double PeakGflops,
    double InputBytes, BandwidthFigure? Bandwidth, long PeakWorkingSetBytes, MethodRun Run, float[] Output, MachineStamp Machine)
{
    /// <summary>With <see cref="BenchmarkRequest.Backward"/>: the backward alone; null for a forward benchmark.</summary>
    public BackwardFigure? Backward { get; init; }

    /// <summary>With <see cref="BenchmarkRequest.KvType"/>: the storage type, its bytes and error bound; null for float32 inputs as given.</summary>
    public KvFigure? Kv { get; init; }

    /// <summary>With <see cref="BenchmarkRequest.KvType"/>: the stored key and value bytes over the median time, in GB/s; null otherwise.</summary>
    public double? KvGBps => Kv is { } kv ? kv.Bytes / MedianSeconds / 1e9 : null;

    /// <summary>Own flops over the median time, in GFLOP/s.</summary>
    public double Gflops => Flops / MedianSeconds / 1e9;

    /// <summary>Approximate methods: exact-equivalent flops over the median time (how fast the exact answer's stand-in arrives); null otherwise.</summary>
    public double? EffectiveGflops => ExactEquivalentFlops / MedianSeconds / 1e9;

    /// <summary><see cref="Gflops"/> as a percentage of <see cref="PeakGflops"/>.</summary>
    public double PercentOfPeak => 100 * Gflops / PeakGflops;

    /// <summary>Input bytes over the median time, in GB/s.</summary>
    public double InputGBps => InputBytes / MedianSeconds / 1e9;
}

/// <summary>The GEMM <c>C = A B</c> (m = n = k) timed.</summary>
/// <param name="N">m = n = k.</param>
/// <param name="Threads">Worker threads.</param>
/// <param name="Repeats">Timed runs.</param>
/// <param name="MedianSeconds">The median time.</param>
/// <param name="PeakGflops">The FMA peak measured in the same run.</param>
/// <param name="Machine">The CPU and time of the measurement.</param>
public sealed record GemmBenchmarkResult(int N, int Threads, int Repeats, double MedianSeconds, double PeakGflops, MachineStamp Machine)
{
    /// <summary>2 n^3.</summary>
    public double Flops => 2.0 * N * N * (double)N;

    /// <summary>Flops over the median time, in GFLOP/s.</summary>
    public double Gflops => Flops / MedianSeconds / 1e9;

    /// <summary><see cref="Gflops"/> as a percentage of <see cref="PeakGflops"/>.</summary>
    public double PercentOfPeak => 100 * Gflops / PeakGflops;
}

/// <summary>Leverage scores of n x d Gaussian keys against the Gram matrix K^T K on the project's GEMM, median times.</summary>
/// <param name="N">Keys.</param>
/// <param name="D">Dimension.</param>
/// <param name="Threads">Worker threads.</param>
/// <param name="Repeats">Timed runs of each.</param>
/// <param name="GramSeconds">K^T K.</param>
/// <param name="FastSeconds">Scores by two GEMMs.</param>
/// <param name="SketchedSeconds">Sketched scores.</param>
/// <param name="ExactSeconds">Exact scores (double).</param>
/// <param name="Machine">The CPU and time of the measurement.</param>
public sealed record LeverageBenchmarkResult(int N, int D, int Threads, int Repeats, double GramSeconds, double FastSeconds, double SketchedSeconds, double ExactSeconds, MachineStamp Machine)
{
    /// <summary>The Gram matrix's 2 n d^2 flops over its time, in GFLOP/s.</summary>
    public double GramGflops => 2.0 * N * D * D / GramSeconds / 1e9;
}
