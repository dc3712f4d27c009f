using System.Runtime.InteropServices;

namespace FastAttention;

/// <summary>
/// The one validator every public entry point calls before any work, in a fixed order: shape (positive sizes, kv heads
/// dividing query heads, sizes a span can hold), input lengths, destination length, overlap of the destination with an
/// input. Every failure goes through <see cref="Fail"/>, so the same bad input gets the same
/// <see cref="ArgumentException"/> from every method: "<c>{parameter}: {problem}; got {actual}, expected {expected}. Hint: {hint}</c>",
/// with <see cref="ArgumentException.ParamName"/> set to the parameter.
/// </summary>
internal static class Validate
{
    /// <summary>The layouts of the four tensors of an <see cref="AttentionShape"/>, as the messages show them.</summary>
    internal const string QueryLayout = "[batch, heads, nq, d]", KeyLayout = "[batch, kvHeads, nk, d]", ValueLayout = "[batch, kvHeads, nk, dv]",
        OutputLayout = "[batch, heads, nq, dv]";

    /// <summary>Throws the one <see cref="ArgumentException"/> wording.</summary>
    /// <param name="parameter">The parameter at fault (also the exception's <see cref="ArgumentException.ParamName"/>).</param>
    /// <param name="problem">What is wrong, e.g. "length does not match the shape".</param>
    /// <param name="actual">What was passed.</param>
    /// <param name="expected">What was needed.</param>
    /// <param name="hint">What to do about it.</param>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    internal static void Fail(string parameter, string problem, string actual, string expected, string hint) =>
        throw new ArgumentException($"{parameter}: {problem}; got {actual}, expected {expected}. Hint: {hint}", parameter);

    /// <summary>Every size at least 1 (the value dimension too unless <paramref name="needsValues"/> is false), kv heads dividing query heads, every tensor within a span.</summary>
    internal static void Shape(AttentionShape shape, bool needsValues = true)
    {
        Positive(shape.BatchSize, "the batch size", shape);
        Positive(shape.HeadCount, "the head count", shape);
        Positive(shape.QueryCount, "the query count nq", shape);
        Positive(shape.KeyCount, "the key count nk", shape);
        Positive(shape.HeadDim, "the head dimension d", shape);
        if (needsValues)
        {
            Positive(shape.ValueDim, "the value dimension dv", shape);
        }

        if (shape.KeyValueHeadCount < 0 || shape.HeadCount % shape.EffectiveKeyValueHeads != 0)
        {
            Fail("shape", "key/value heads must divide query heads", $"{shape.EffectiveKeyValueHeads} kv heads for {shape.HeadCount} query heads",
                $"a divisor of {shape.HeadCount}", "grouped-query attention shares each kv head among heads / kvHeads query heads; 0 kv heads means one per query head");
        }

        long largest = Math.Max(Math.Max(shape.QueryLength, shape.KeyLength), needsValues ? Math.Max(shape.ValueLength, shape.OutputLength) : 0);
        if (largest > Array.MaxLength)
        {
            Fail("shape", "a tensor is larger than one span can hold", $"{largest} elements ({shape})", $"at most {Array.MaxLength}", "split the batch or the heads into several calls");
        }
    }

    /// <summary>A size of at least 1, reported against <paramref name="shape"/> (any record whose text names every size).</summary>
    internal static void Positive(int size, string what, object shape, string parameter = "shape")
    {
        if (size < 1)
        {
            Fail(parameter, $"{what} must be at least 1", $"{size} ({shape})", "at least 1", "empty tensors are an error; every dimension counts at least one element");
        }
    }

    /// <summary>A span of exactly <paramref name="expected"/> elements laid out as <paramref name="layout"/>.</summary>
    internal static void Length(int actual, long expected, string parameter, string layout, object shape)
    {
        if (actual != expected)
        {
            Fail(parameter, "length does not match the shape", $"{actual} elements", $"{expected} = {layout} for ({shape})", $"pass a dense C-order {layout} tensor of exactly that many elements");
        }
    }

    /// <summary>The destination must not share memory with <paramref name="input"/> (compared as bytes, so any element types).</summary>
    internal static void NoOverlap<TDestination, TInput>(Span<TDestination> destination, ReadOnlySpan<TInput> input, string inputName, string parameter = "destination")
        where TDestination : struct
        where TInput : struct
    {
        if (MemoryMarshal.AsBytes(destination).Overlaps(MemoryMarshal.AsBytes(input)))
        {
            Fail(parameter, $"overlaps {inputName}", $"{parameter} sharing memory with {inputName}", "a separate buffer", "attention cannot run in place; pass a separate output buffer");
        }
    }

    /// <summary>
    /// The whole check of a (query, key, value, destination) call on an <see cref="AttentionShape"/>, in the fixed order:
    /// shape, the three input lengths, the destination's length, then overlap with each input.
    /// </summary>
    internal static void Attention<TDestination>(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<TDestination> destination)
        where TDestination : struct
    {
        Inputs(query, key, value, shape);
        Length(destination.Length, shape.OutputLength, nameof(destination), OutputLayout, shape);
        NoOverlap(destination, query, nameof(query));
        NoOverlap(destination, key, nameof(key));
        NoOverlap(destination, value, nameof(value));
    }

    /// <summary>The shape, then the query, key and value lengths, in that order (the first half of <see cref="Attention"/>; backward passes go on with their own spans).</summary>
    internal static void Inputs(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape)
    {
        Shape(shape);
        Length(query.Length, shape.QueryLength, nameof(query), QueryLayout, shape);
        Length(key.Length, shape.KeyLength, nameof(key), KeyLayout, shape);
        Length(value.Length, shape.ValueLength, nameof(value), ValueLayout, shape);
    }

    /// <summary>
    /// The check of a backward call before any work: shape, the query, key, value, output, output-gradient and log-sum-exp
    /// lengths, the three gradients' lengths, then no gradient overlapping an input or another gradient (the order the exact
    /// backward checks them in).
    /// </summary>
    internal static void Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient)
    {
        Inputs(query, key, value, shape);
        Length(output.Length, shape.OutputLength, nameof(output), OutputLayout, shape);
        Length(outputGradient.Length, shape.OutputLength, nameof(outputGradient), OutputLayout, shape);
        Length(logSumExp.Length, (long)shape.BatchSize * shape.HeadCount * shape.QueryCount, nameof(logSumExp), "[batch, heads, nq]", shape);
        Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), QueryLayout, shape);
        Length(keyGradient.Length, shape.KeyLength, nameof(keyGradient), KeyLayout, shape);
        Length(valueGradient.Length, shape.ValueLength, nameof(valueGradient), ValueLayout, shape);
        GradientOverlap(queryGradient, nameof(queryGradient), query, key, value, output, outputGradient, logSumExp);
        GradientOverlap(keyGradient, nameof(keyGradient), query, key, value, output, outputGradient, logSumExp);
        GradientOverlap(valueGradient, nameof(valueGradient), query, key, value, output, outputGradient, logSumExp);
        NoOverlap(keyGradient, (ReadOnlySpan<float>)queryGradient, nameof(queryGradient), nameof(keyGradient));
        NoOverlap(valueGradient, (ReadOnlySpan<float>)queryGradient, nameof(queryGradient), nameof(valueGradient));
        NoOverlap(valueGradient, (ReadOnlySpan<float>)keyGradient, nameof(keyGradient), nameof(valueGradient));
    }

    /// <summary>A gradient must not share memory with any of the backward's inputs.</summary>
    internal static void GradientOverlap(Span<float> gradient, string name, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value,
        ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp)
    {
        NoOverlap(gradient, query, nameof(query), name);
        NoOverlap(gradient, key, nameof(key), name);
        NoOverlap(gradient, value, nameof(value), name);
        NoOverlap(gradient, output, nameof(output), name);
        NoOverlap(gradient, outputGradient, nameof(outputGradient), name);
        NoOverlap(gradient, logSumExp, nameof(logSumExp), name);
    }

    /// <summary>A forward's log-sum-exp holds finite numbers, or -infinity for a row that saw no key; NaN and +infinity come from no forward.</summary>
    internal static void LogSumExp(ReadOnlySpan<float> logSumExp)
    {
        for (int row = 0; row < logSumExp.Length; row++)
        {
            if (float.IsNaN(logSumExp[row]) || float.IsPositiveInfinity(logSumExp[row]))
            {
                Fail(nameof(logSumExp), "holds a value no forward returns", $"{logSumExp[row]} at row {row}", "a finite number, or -infinity for a row that saw no key",
                    "pass the log-sum-exp the forward (Compute with logSumExp) returned for these inputs");
            }
        }
    }
}
