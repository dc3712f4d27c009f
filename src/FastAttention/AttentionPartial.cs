using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// One query row's attention over a subset of the keys, as online softmax keeps it (docs/algorithms.md §1): the softmax
/// statistics <c>Max = m = max_j s_j</c> and <c>Sum = l = sum_j e^(s_j - m)</c> over the subset (base e), with the
/// unnormalised output row <c>o = sum_j e^(s_j - m) v_j</c> (dv floats) carried alongside as a span. Attention over
/// the subset is <c>o / l</c> (<see cref="Normalize"/>) and its log-sum-exp is <c>m + ln l</c>. An empty subset (no
/// visible key) is <see cref="Empty"/>: m = -infinity, l = 0, o = 0. Partials over disjoint key sets combine exactly
/// with <see cref="Merge"/> (split-key decoding, tensor attention and distributed attention all work this way).
/// An output row of <see cref="ExactAttention"/> with its log-sum-exp is a partial as it stands:
/// <c>FromLogSumExp(lse)</c> (m = lse, l = 1) with o = the output row.
/// </summary>
/// <param name="Max">m, the largest score of the subset; -infinity when it is empty.</param>
/// <param name="Sum">l, the sum of <c>e^(s_j - m)</c> over the subset; 0 when it is empty.</param>
public readonly record struct AttentionPartial(float Max, float Sum)
{
    /// <summary>The partial of no key: m = -infinity, l = 0 (its output row is all zeros).</summary>
    public static AttentionPartial Empty => new(float.NegativeInfinity, 0f);

    /// <summary>The log-sum-exp <c>m + ln l</c> of the subset's scores; -infinity for <see cref="Empty"/>.</summary>
    public float LogSumExp => Sum == 0f ? float.NegativeInfinity : (float)(Max + Math.Log(Sum));

    /// <summary>The partial of a normalised output row whose log-sum-exp is <paramref name="logSumExp"/>: <c>(lse, 1)</c>, or <see cref="Empty"/> for -infinity.</summary>
    /// <param name="logSumExp">The row's log-sum-exp in base e, as <see cref="ExactAttention"/> returns it.</param>
    /// <returns>The partial whose output row is the normalised row itself.</returns>
    public static AttentionPartial FromLogSumExp(float logSumExp) => float.IsNegativeInfinity(logSumExp) ? Empty : new(logSumExp, 1f);

    /// <summary>
    /// Combines the partials of two disjoint key sets into the partial of their union: <c>m = max(m1, m2)</c>,
    /// <c>a_t = e^(m_t - m)</c>, <c>l = a1 l1 + a2 l2</c>, <c>o = a1 o1 + a2 o2</c>. Exact up to rounding; the
    /// result does not depend on which set came first except in the last bit. NaN statistics propagate.
    /// </summary>
    /// <param name="first">The first set's statistics.</param>
    /// <param name="firstOutput">The first set's unnormalised output row, dv floats.</param>
    /// <param name="second">The second set's statistics.</param>
    /// <param name="secondOutput">The second set's unnormalised output row, dv floats.</param>
    /// <param name="destination">The union's unnormalised output row, dv floats; may be <paramref name="firstOutput"/> or <paramref name="secondOutput"/> itself.</param>
    /// <returns>The union's statistics.</returns>
    /// <exception cref="ArgumentException">The rows differ in length.</exception>
    public static AttentionPartial Merge(AttentionPartial first, ReadOnlySpan<float> firstOutput, AttentionPartial second, ReadOnlySpan<float> secondOutput, Span<float> destination)
    {
        Validate.Length(secondOutput.Length, firstOutput.Length, nameof(secondOutput), "[dv]", $"dv {firstOutput.Length}");
        Validate.Length(destination.Length, firstOutput.Length, nameof(destination), "[dv]", $"dv {firstOutput.Length}");
        return Merge<NaturalBase>(first, firstOutput, second, secondOutput, destination);
    }

    /// <summary>The normalised output row <c>o / l</c>; zeros for an empty partial (l = 0), as attention outputs for a row that sees no key.</summary>
    /// <param name="partial">The statistics.</param>
    /// <param name="output">The unnormalised output row.</param>
    /// <param name="destination">The attention output row, the same length; may be <paramref name="output"/> itself.</param>
    public static void Normalize(AttentionPartial partial, ReadOnlySpan<float> output, Span<float> destination)
    {
        Validate.Length(destination.Length, output.Length, nameof(destination), "[dv]", $"dv {output.Length}");
        for (int c = 0; c < output.Length; c++)
        {
            destination[c] = partial.Sum != 0f ? output[c] / partial.Sum : 0f; // a NaN sum propagates
        }
    }

    /// <summary><see cref="Merge"/> with the statistics in the base <typeparamref name="TBase"/> (the kernels keep base-2 maxes); lengths already checked.</summary>
    internal static AttentionPartial Merge<TBase>(AttentionPartial first, ReadOnlySpan<float> firstOutput, AttentionPartial second, ReadOnlySpan<float> secondOutput, Span<float> destination)
        where TBase : struct, IExponentBase
    {
        if (float.IsNegativeInfinity(second.Max) || float.IsNegativeInfinity(first.Max))
        {
            // One side saw no key: the union is the other side as it stands.
            bool keepFirst = float.IsNegativeInfinity(second.Max);
            (keepFirst ? firstOutput : secondOutput).CopyTo(destination);
            return keepFirst ? first : second;
        }

        float m = MathF.Max(first.Max, second.Max); // NaN stays NaN
        float a = TBase.Exp(first.Max - m), b = TBase.Exp(second.Max - m);
        for (int c = 0; c < destination.Length; c++)
        {
            destination[c] = MathF.FusedMultiplyAdd(firstOutput[c], a, secondOutput[c] * b);
        }

        return new AttentionPartial(m, MathF.FusedMultiplyAdd(first.Sum, a, second.Sum * b));
    }
}

/// <summary>The exponential a partial's statistics are kept in: <c>b^x</c> for <c>x &lt;= 0</c> (NaN in, NaN out).</summary>
internal interface IExponentBase
{
    static abstract float Exp(float x);
}

/// <summary>Base e, as the public <see cref="AttentionPartial"/> is documented.</summary>
internal readonly struct NaturalBase : IExponentBase
{
    public static float Exp(float x) => MathF.Exp(x);
}

/// <summary>Base 2, as the kernels keep their scores (times log2 e): the kernels' own <c>2^x</c>.</summary>
internal readonly struct BinaryBase : IExponentBase
{
    public static float Exp(float x) => VectorMath.Exp2NonPositive<SimdScalar, float>(x);
}

/// <summary>The log-sum-exp output of the exact forward, from the kernels' base-2 row statistics.</summary>
internal static class LogSumExp
{
    /// <summary>Checks the log-sum-exp span's length, <c>[batch, heads, nq]</c>, and that it overlaps nothing.</summary>
    public static void Check(Span<float> logSumExp, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, Span<float> destination, AttentionShape shape)
    {
        Validate.Length(logSumExp.Length, (long)shape.BatchSize * shape.HeadCount * shape.QueryCount, nameof(logSumExp), "[batch, heads, nq]", shape);
        Validate.NoOverlap(logSumExp, query, nameof(query), nameof(logSumExp));
        Validate.NoOverlap(logSumExp, key, nameof(key), nameof(logSumExp));
        Validate.NoOverlap(logSumExp, value, nameof(value), nameof(logSumExp));
        Validate.NoOverlap(logSumExp, (ReadOnlySpan<float>)destination, nameof(destination), nameof(logSumExp));
    }

    /// <summary>
    /// <c>lse = m ln 2 + ln l</c> per row from the kernels' statistics <c>[2 row] = m</c> (the row max of score times log2 e)
    /// and <c>[2 row + 1] = l = sum 2^(score log2 e - m) = sum e^(score - m ln 2)</c>, in double so the sum of the two terms rounds once.
    /// A row that saw no key (m = -infinity, l = 0) gets -infinity (ln 0).
    /// </summary>
    public static void FromRowStatistics(ReadOnlySpan<float> statistics, Span<float> logSumExp)
    {
        for (int row = 0; row < logSumExp.Length; row++)
        {
            double m = statistics[2 * row], l = statistics[(2 * row) + 1];
            logSumExp[row] = l == 0 ? float.NegativeInfinity : (float)((m * Math.Log(2)) + Math.Log(l));
        }
    }
}
