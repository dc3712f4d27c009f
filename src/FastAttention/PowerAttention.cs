namespace FastAttention;

/// <summary>Options for <see cref="PowerAttention"/>.</summary>
public readonly record struct PowerAttentionOptions
{
    /// <summary>The exponent <c>p &gt; 0</c> in <c>|s q.k|^p</c>; <see langword="null"/> means 2.</summary>
    public float? Power { get; init; }

    /// <summary>Score scale <c>s</c>; <see langword="null"/> means 1.</summary>
    public float? Scale { get; init; }

    /// <summary>Causal masking, bottom-right aligned as in <see cref="ExactAttentionOptions.Causal"/>.</summary>
    public bool Causal { get; init; }

    /// <summary>Optional boolean mask (true = attend), shaped <c>[nq, nk]</c>, <c>[heads, nq, nk]</c> or <c>[batch, heads, nq, nk]</c>.</summary>
    public ReadOnlyMemory<bool> Mask { get; init; }

    /// <summary>Worker threads; 0 means one per core.</summary>
    public int MaxDegreeOfParallelism { get; init; }

    /// <summary>Let NaN and infinity in the inputs propagate instead of rejecting them.</summary>
    public bool AllowNonFinite { get; init; }

    /// <summary>Force a kernel by registry name.</summary>
    public string? Kernel { get; init; }
}

/// <summary>
/// Power attention (docs/algorithms.md §1, used by LevAttention): weights <c>A_ij = |s q_i.k_j|^p</c>
/// normalised per row to sum to 1. Computed as softmax of <c>p ln|s q.k|</c> by the exact kernel, so
/// huge scores do not overflow. A row whose visible scores are all zero outputs zeros.
/// </summary>
public static partial class PowerAttention
{
    /// <summary>Computes power attention into <paramref name="destination"/>; layouts as in <see cref="ExactAttention"/>.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="options">Exponent, scale, masking, threads.</param>
    /// <returns>The kernel that ran and the flops counted.</returns>
    public static AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, PowerAttentionOptions options = default)
    {
        Validate.Attention(query, key, value, shape, destination);
        return AttentionCore.Run(query, key, value, shape, destination, Settings(options));
    }

    private static AttentionCore.Settings Settings(PowerAttentionOptions options)
    {
        float power = options.Power ?? 2f;
        if (!(power > 0f) || !float.IsFinite(power))
        {
            throw new ArgumentOutOfRangeException(nameof(options), power, "Power must be a finite number greater than 0.");
        }

        return new AttentionCore.Settings(options.Scale ?? 1f, 0f, options.Causal, default, options.Mask, options.MaxDegreeOfParallelism, options.AllowNonFinite, options.Kernel, power);
    }
}
