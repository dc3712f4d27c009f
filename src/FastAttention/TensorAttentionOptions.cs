namespace FastAttention;

/// <summary>
/// Dimensions of tensor (Kronecker, 2-simplicial) attention of order k: queries <c>[h, nq, d]</c>, k - 1 key
/// matrices <c>[h, nk, d]</c> and k - 1 value matrices <c>[h, nk, dv]</c>, output <c>[h, nq, dv]</c>.
/// Order 2 is ordinary attention; order 3 is Alman–Song's tensor attention over pairs of keys.
/// </summary>
/// <param name="HeadCount">h (batch folded in).</param>
/// <param name="QueryCount">nq.</param>
/// <param name="KeyCount">nk, the rows of every key and value matrix.</param>
/// <param name="HeadDim">d.</param>
/// <param name="ValueDim">dv.</param>
/// <param name="Order">k &gt;= 2: the number of key (and value) matrices is k - 1.</param>
public readonly record struct TensorAttentionShape(int HeadCount, int QueryCount, int KeyCount, int HeadDim, int ValueDim, int Order = 3)
{
    /// <summary>Elements of the query.</summary>
    public long QueryLength => (long)HeadCount * QueryCount * HeadDim;

    /// <summary>Elements of each key matrix.</summary>
    public long KeyLength => (long)HeadCount * KeyCount * HeadDim;

    /// <summary>Elements of each value matrix.</summary>
    public long ValueLength => (long)HeadCount * KeyCount * ValueDim;

    /// <summary>Elements of the output.</summary>
    public long OutputLength => (long)HeadCount * QueryCount * ValueDim;

    /// <summary>The number of key (and value) matrices, k - 1.</summary>
    public int KeyMatrices => Order - 1;
}

/// <summary>Options for <see cref="TensorAttention"/>.</summary>
public readonly record struct TensorAttentionOptions
{
    /// <summary>Score scale s; <see langword="null"/> means <c>1/d</c>, as in Alman–Song.</summary>
    public float? Scale { get; init; }

    /// <summary>Causal: every key index <c>j_t &lt;= i + (nk - nq)</c> (bottom-right aligned, as <see cref="ExactAttentionOptions.Causal"/>).</summary>
    public bool Causal { get; init; }

    /// <summary>
    /// Sliding windows, one per key matrix (2-simplicial transformers' <c>(w1, w2)</c>): key index j_t ranges over
    /// the last w_t positions up to the causal limit, <c>i' - w_t &lt; j_t &lt;= i'</c> with <c>i' = i + (nk - nq)</c>.
    /// Windows imply causal. <see langword="null"/> means no windows.
    /// </summary>
    public IReadOnlyList<int>? Windows { get; init; }

    /// <summary>Worker threads; 0 means one per core. The output bits are the same for every value.</summary>
    public int MaxDegreeOfParallelism { get; init; }

    /// <summary>Force the exact kernel the virtual queries run on, by registry name (see <see cref="AttentionKernels"/>);
    /// <see langword="null"/> picks the fastest this CPU supports for the call's shape. An unknown name throws
    /// <see cref="ArgumentException"/>; a kernel that cannot take the call throws <see cref="NotSupportedException"/> with its reasons.</summary>
    public string? Kernel { get; init; }
}

