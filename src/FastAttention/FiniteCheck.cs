using System.Numerics.Tensors;

namespace FastAttention;

/// <summary>The one finiteness check every entry point runs on its inputs: it names the input, the first bad value and where it is.</summary>
public static class FiniteCheck
{
    /// <summary>
    /// Throws <see cref="ArgumentException"/> (parameter <paramref name="name"/>) if <paramref name="values"/>
    /// holds NaN or an infinity, with the message "<c>{name} contains NaN at [1, 1] (flat index 17). {consequence}</c>".
    /// </summary>
    /// <param name="values">The input, row-major.</param>
    /// <param name="name">The input's name, as the caller knows it.</param>
    /// <param name="rowLength">Elements per row (the last dimension); the position is given as [row, column].</param>
    /// <param name="consequence">Why it matters or what to do, appended as a sentence.</param>
    internal static void Require(ReadOnlySpan<float> values, string name, int rowLength, string consequence)
    {
        int[] shape = rowLength > 0 ? [values.Length / rowLength, rowLength] : [values.Length];
        if (Describe(values, name, shape) is string problem)
        {
            throw new ArgumentException($"{problem}. {consequence}", name);
        }
    }

    /// <summary>"<c>{name} contains NaN at [0, 1, 1] (flat index 17)</c>" for the first non-finite value of a row-major
    /// tensor of shape <paramref name="shape"/>, or null when every value is finite.</summary>
    public static string? Describe(ReadOnlySpan<float> values, string name, IReadOnlyList<int> shape)
    {
        int at = FirstNonFinite(values);
        if (at < 0)
        {
            return null;
        }

        var index = new long[shape.Count];
        long rest = at;
        for (int axis = shape.Count - 1; axis >= 0; axis--)
        {
            index[axis] = shape[axis] > 0 ? rest % shape[axis] : 0;
            rest = shape[axis] > 0 ? rest / shape[axis] : 0;
        }

        return $"{name} contains {values[at]} at [{string.Join(", ", index)}] (flat index {at})";
    }

    /// <summary>Whether every value is finite: <see cref="TensorPrimitives.IsFiniteAll{T}"/>, except true for an empty span (for which it returns false).</summary>
    internal static bool AllFinite(ReadOnlySpan<float> values) => values.IsEmpty || TensorPrimitives.IsFiniteAll(values);

    /// <summary>The index of the first NaN or infinity, or -1 when every value is finite.</summary>
    internal static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        if (AllFinite(values))
        {
            return -1;
        }

        int at = 0;
        while (float.IsFinite(values[at]))
        {
            at++;
        }

        return at;
    }

    /// <summary>
    /// Throws <see cref="OverflowException"/> if a computation on finite inputs produced a non-finite output: the
    /// scaled scores or the weighted value sums left float's range, and the numbers must not be returned as a result.
    /// </summary>
    internal static void RequireFiniteResult(ReadOnlySpan<float> output, int rowLength, double scale)
    {
        int[] shape = rowLength > 0 ? [output.Length / rowLength, rowLength] : [output.Length];
        if (Describe(output, "the output", shape) is string problem)
        {
            throw new OverflowException(
                $"The result overflowed float32: {problem} although every input is finite. The scaled scores s q.k (s = {NumberText.Format(scale, 4)}) " +
                "or the weighted sums of values exceed float's range (3.4e38); reduce the scale or the size of the inputs.");
        }
    }
}
