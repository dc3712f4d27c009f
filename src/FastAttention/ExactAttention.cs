using System.Numerics.Tensors;

namespace FastAttention;

/// <summary>Options for <see cref="ExactAttention"/>. The default is plain, non-causal, multi-threaded attention with scale <c>1/sqrt(d)</c>.</summary>
public readonly record struct ExactAttentionOptions
{
    /// <summary>Score scale <c>s</c> in <c>softmax(s Q K^T)</c>; <see langword="null"/> means <c>1/sqrt(d)</c> (transformers). The Alman–Song papers use <c>1/d</c>.</summary>
    public float? Scale { get; init; }

    /// <summary>Causal masking: query <c>i</c> sees key <c>j</c> iff <c>j &lt;= i + (nk - nq)</c> (bottom-right aligned). A query that sees no key outputs zeros.</summary>
    public bool Causal { get; init; }

    /// <summary>
    /// Sliding window: when &gt; 0, query i (at position <c>p = i + nk - nq</c>) sees key j only if <c>j &gt; p - Window</c> or
    /// <c>j &lt; Sinks</c> (with <see cref="Causal"/>, also only <c>j &lt;= p</c>): the last Window positions up to its own. The
    /// kernels skip key tiles outside the window. Forward only: a backward pass with a window is refused.
    /// </summary>
    public int Window { get; init; }

    /// <summary>Attention sinks: the first Sinks keys, which every query sees whatever the <see cref="Window"/> (needs a window).</summary>
    public int Sinks { get; init; }

    /// <summary>Optional additive score bias, shaped <c>[nq, nk]</c>, <c>[heads, nq, nk]</c> or <c>[batch, heads, nq, nk]</c> (smaller shapes broadcast); -infinity masks.</summary>
    public ReadOnlyMemory<float> Bias { get; init; }

    /// <summary>Optional boolean mask (true = attend), shaped like <see cref="Bias"/>.</summary>
    public ReadOnlyMemory<bool> Mask { get; init; }

    /// <summary>Worker threads; 0 means one per core. The output bits are the same for every value.</summary>
    public int MaxDegreeOfParallelism { get; init; }

    /// <summary>Let NaN and infinity in the inputs propagate instead of rejecting them.</summary>
    public bool AllowNonFinite { get; init; }

    /// <summary>Force a kernel by registry name (see <see cref="AttentionKernels"/>); <see langword="null"/> picks the fastest this CPU supports.</summary>
    public string? Kernel { get; init; }
}

/// <summary>
/// Exact softmax attention <c>softmax(s Q K^T + bias) V</c> by a tiled online-softmax kernel that never
/// forms the <c>nq x nk</c> score matrix. Parallel over (batch, head, query tile): the output bits do not
/// depend on the thread count.
/// </summary>
public static partial class ExactAttention
{
    /// <summary>Computes attention into <paramref name="destination"/>.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>; must not overlap the inputs.</param>
    /// <param name="options">Scale, masking, threads, kernel.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    /// <exception cref="ArgumentException">A length, shape, option or (by default) a non-finite input is invalid; the message names it.
    /// Shapes and options are checked before any work; a non-finite key or value may be detected while the kernel runs
    /// (the decoding kernel checks them in cache), in which case <paramref name="destination"/> is left undefined.</exception>
    /// <exception cref="OverflowException">The inputs are finite but the result is not: the scaled scores or the weighted value sums
    /// left float's range (a huge scale or huge entries). Not thrown with <see cref="ExactAttentionOptions.AllowNonFinite"/>.</exception>
    public static AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, ExactAttentionOptions options = default) =>
        AttentionCore.Run(query, key, value, shape, destination, Settings(options));

    /// <summary>
    /// Computes attention into <paramref name="destination"/> and each row's log-sum-exp into <paramref name="logSumExp"/>:
    /// <c>lse[b, h, i] = max_j s_ij + ln sum_j e^(s_ij - max_j s_ij)</c> in base e over the visible keys, <c>s_ij</c> the scaled
    /// (biased) scores, what a backward pass or a merge of partials over key sets (<see cref="AttentionPartial"/>) needs.
    /// A row that sees no key (causal with nq &gt; nk, or fully masked) outputs zeros and has log-sum-exp -infinity.
    /// Every kernel returns it, with the same bits for every thread count.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>; must not overlap the inputs.</param>
    /// <param name="logSumExp">Log-sum-exp per row, <c>[batch, heads, nq]</c>; must not overlap the inputs or the destination.</param>
    /// <param name="options">Scale, masking, threads, kernel.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    /// <exception cref="ArgumentException">As for the overload without <paramref name="logSumExp"/>, or its length is not <c>batch heads nq</c>.</exception>
    /// <exception cref="OverflowException">As for the overload without <paramref name="logSumExp"/>.</exception>
    public static AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, Span<float> logSumExp,
        ExactAttentionOptions options = default)
        => AttentionCore.Run(query, key, value, shape, destination, logSumExp, true, Settings(options));

    /// <summary>
    /// Computes attention with keys and values stored in a <see cref="KvElementType"/> (float16, bfloat16, q8 or float32), read
    /// without widening them in memory: kernels widen in registers and compute in float32. The run's <see cref="AttentionRun.KvBound"/>
    /// states how far the storage can move the output (<see cref="KvErrorBound"/>).
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, float32.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>, rows of d.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>, rows of dv, the keys' type.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>, float32; must not overlap the query.</param>
    /// <param name="options">Scale, masking, threads, kernel (the registry names carry the storage type, e.g. <c>splitkey-v512-bf16</c>).</param>
    /// <returns>The kernel that ran, the flops counted and the storage error bound.</returns>
    /// <exception cref="ArgumentException">As for the float32 overload; or keys and values differ in type or row length.</exception>
    /// <exception cref="OverflowException">As for the float32 overload.</exception>
    public static AttentionRun Compute(ReadOnlySpan<float> query, KvTensor key, KvTensor value, AttentionShape shape, Span<float> destination, ExactAttentionOptions options = default) =>
        AttentionCore.Run(query, key, value, shape, destination, default, false, Settings(options));

    /// <summary>As <see cref="Compute(ReadOnlySpan{float}, KvTensor, KvTensor, AttentionShape, Span{float}, ExactAttentionOptions)"/>, with each row's log-sum-exp.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>, float32.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp">Log-sum-exp per row, <c>[batch, heads, nq]</c>.</param>
    /// <param name="options">Scale, masking, threads, kernel.</param>
    /// <returns>The kernel that ran, the flops counted and the storage error bound.</returns>
    public static AttentionRun Compute(ReadOnlySpan<float> query, KvTensor key, KvTensor value, AttentionShape shape, Span<float> destination, Span<float> logSumExp,
        ExactAttentionOptions options = default) =>
        AttentionCore.Run(query, key, value, shape, destination, logSumExp, true, Settings(options));

    /// <summary>Computes attention on .NET tensor spans of rank 2 (<c>[n, d]</c>), 3 (<c>[heads, n, d]</c>) or 4 (<c>[batch, heads, n, d]</c>).</summary>
    /// <param name="query">Queries.</param>
    /// <param name="key">Keys (fewer heads than the query for grouped-query attention).</param>
    /// <param name="value">Values.</param>
    /// <param name="destination">Output, the query's shape with the last dimension <c>dv</c>.</param>
    /// <param name="options">Scale, masking, threads, kernel.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    public static AttentionRun Compute(ReadOnlyTensorSpan<float> query, ReadOnlyTensorSpan<float> key, ReadOnlyTensorSpan<float> value, TensorSpan<float> destination, ExactAttentionOptions options = default) =>
        AttentionCore.Run(query, key, value, destination, Settings(options));

    private static AttentionCore.Settings Settings(ExactAttentionOptions o) =>
        new(o.Scale, -0.5f, o.Causal, o.Bias, o.Mask, o.MaxDegreeOfParallelism, o.AllowNonFinite, o.Kernel, 0f, o.Window, o.Sinks);
}
