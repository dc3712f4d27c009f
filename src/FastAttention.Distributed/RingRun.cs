namespace FastAttention.Distributed;

/// <summary>Options for <see cref="RingAttention"/>.</summary>
public readonly record struct RingAttentionOptions
{
    /// <summary>
    /// The attention itself: scale, causal mask, threads per rank, kernel, non-finite policy. Bias, mask and sliding window
    /// are refused (they are indexed by global positions the blocks do not see). Every rank must pass the same scale and mask flag.
    /// </summary>
    public ExactAttentionOptions Attention { get; init; }

    /// <summary>How the sequence is split over the ranks; <see cref="ShardLayout.ZigZag"/> balances causal work (every rank must pass the same).</summary>
    public ShardLayout Layout { get; init; }

    /// <summary>
    /// Compute each block on the calling thread instead of a worker thread. By default a worker computes while the calling
    /// thread (the one MPI runs on) keeps testing the ring's transfers, because MPICH moves a large message only inside MPI
    /// calls; this switch exists to measure what that overlap buys.
    /// </summary>
    public bool ComputeOnCallingThread { get; init; }
}

/// <summary>What one rank's ring pass did, step by step (step s works on the key/value block of rank (r - s) mod P).</summary>
/// <param name="Steps">Ring steps, P.</param>
/// <param name="StepBytes">Bytes this rank sent to its successor at each step (the last step sends nothing in the forward).</param>
/// <param name="ComputeSeconds">Time each step's block computation took.</param>
/// <param name="WaitSeconds">Time each step waited for its transfers after its computation had finished: transfer time the overlap did not hide.</param>
/// <param name="Flops">Floating-point operations this rank counted (the core's convention; skipped causal blocks count nothing).</param>
/// <param name="TotalSeconds">Wall time of the whole call, validation and packing included.</param>
public sealed record RingRun(int Steps, IReadOnlyList<long> StepBytes, IReadOnlyList<double> ComputeSeconds, IReadOnlyList<double> WaitSeconds, double Flops, double TotalSeconds)
{
    /// <summary>Bytes this rank sent round the ring.</summary>
    public long BytesSent => StepBytes.Sum();

    /// <summary>Total block computation time.</summary>
    public double ComputeTotal => ComputeSeconds.Sum();

    /// <summary>Total unhidden transfer time.</summary>
    public double WaitTotal => WaitSeconds.Sum();
}
