namespace FastAttention;

/// <summary>
/// The explicit shape of an attention call. Tensors are dense and C-order:
/// query <c>[BatchSize, HeadCount, QueryCount, HeadDim]</c>,
/// key <c>[BatchSize, KeyValueHeadCount, KeyCount, HeadDim]</c>,
/// value <c>[BatchSize, KeyValueHeadCount, KeyCount, ValueDim]</c>,
/// output <c>[BatchSize, HeadCount, QueryCount, ValueDim]</c>.
/// </summary>
/// <param name="BatchSize">Independent sequences, <c>b</c>.</param>
/// <param name="HeadCount">Query heads, <c>h</c>.</param>
/// <param name="QueryCount">Queries per head, <c>nq</c>.</param>
/// <param name="KeyCount">Keys (and values) per head, <c>nk</c>.</param>
/// <param name="HeadDim">Query/key feature dimension, <c>d</c>.</param>
/// <param name="ValueDim">Value/output feature dimension, <c>dv</c>.</param>
/// <param name="KeyValueHeadCount">Key/value heads for grouped-query attention; must divide
/// <paramref name="HeadCount"/>; 0 means the same as <paramref name="HeadCount"/>.</param>
public readonly record struct AttentionShape(int BatchSize, int HeadCount, int QueryCount, int KeyCount, int HeadDim, int ValueDim, int KeyValueHeadCount = 0)
{
    /// <summary>Key/value heads actually used (<see cref="KeyValueHeadCount"/>, or <see cref="HeadCount"/> when 0).</summary>
    public int EffectiveKeyValueHeads => KeyValueHeadCount == 0 ? HeadCount : KeyValueHeadCount;

    /// <summary>Elements in the query tensor.</summary>
    public long QueryLength => (long)BatchSize * HeadCount * QueryCount * HeadDim;

    /// <summary>Elements in the key tensor.</summary>
    public long KeyLength => (long)BatchSize * EffectiveKeyValueHeads * KeyCount * HeadDim;

    /// <summary>Elements in the value tensor.</summary>
    public long ValueLength => (long)BatchSize * EffectiveKeyValueHeads * KeyCount * ValueDim;

    /// <summary>Elements in the output tensor.</summary>
    public long OutputLength => (long)BatchSize * HeadCount * QueryCount * ValueDim;

    /// <summary>Single-head self-attention: <c>n</c> queries and keys of dimension <c>d</c>, values of dimension <c>d</c>.</summary>
    /// <param name="n">Tokens.</param>
    /// <param name="d">Head dimension.</param>
    /// <returns>The shape <c>[1, 1, n, d]</c>.</returns>
    public static AttentionShape SingleHead(int n, int d) => new(1, 1, n, n, d, d);

    /// <inheritdoc/>
    public override string ToString() =>
        $"batch {BatchSize}, heads {HeadCount} (kv {EffectiveKeyValueHeads}), nq {QueryCount}, nk {KeyCount}, d {HeadDim}, dv {ValueDim}";
}

/// <summary>What an attention call did: the kernel that ran and the flops it counts.</summary>
/// <param name="Kernel">The registry name of the kernel that ran.</param>
/// <param name="Flops">Floating-point operations by the project's one convention (<c>4 n^2 d</c> for one head; causal counts visible pairs only).</param>
public readonly record struct AttentionRun(string Kernel, double Flops)
{
    /// <summary>For keys and values given as a <see cref="KvTensor"/>: how far their storage type can move the output (zero for float32); otherwise null.</summary>
    public KvErrorBound? KvBound { get; init; }
}
