namespace FastAttention.Lab;

/// <summary>One gradient, in the layout of the input it is the gradient of.</summary>
/// <param name="Name">Its name: <c>dq</c>, <c>dk</c>, <c>dv</c> (tensor attention: <c>dq</c>, <c>dk1</c>, <c>dk2</c>, <c>dv1</c>, <c>dv2</c>).</param>
/// <param name="Data">The values.</param>
public sealed record NamedGradient(string Name, float[] Data);

/// <summary>What a method's training forward and backward (<see cref="MethodBackward"/>) return.</summary>
/// <param name="Run">The training forward's report (its kernel, and what it kept for the backward, e.g. lev's selections).</param>
/// <param name="BackwardKernel">The kernel the backward ran on.</param>
/// <param name="Gradients">The gradients, in input order: queries, then every key tensor, then every value tensor (<see cref="NamesOf"/>).</param>
/// <param name="Output">The training forward's output, <c>[batch, heads, nq, dv]</c>.</param>
/// <param name="ForwardFlops">The forward's flops (the entry's <see cref="MethodEntry.Flops"/> of the run).</param>
/// <param name="BackwardFlops">The backward's flops, as the library counts them (<see cref="FlopCount.ExactAttentionBackward"/> for exact and power attention).</param>
/// <param name="ForwardSeconds">Wall time of the training forward.</param>
/// <param name="BackwardSeconds">Wall time of the backward alone.</param>
public sealed record MethodGradients(MethodRun Run, string BackwardKernel, IReadOnlyList<NamedGradient> Gradients, float[] Output,
    double ForwardFlops, double BackwardFlops, double ForwardSeconds, double BackwardSeconds)
{
    /// <summary>Forward and backward flops together.</summary>
    public double Flops => ForwardFlops + BackwardFlops;

    /// <summary>The gradient called <paramref name="name"/>.</summary>
    /// <param name="name">One of the <see cref="Gradients"/>' names.</param>
    /// <returns>Its values.</returns>
    /// <exception cref="KeyNotFoundException">No gradient has that name.</exception>
    public float[] this[string name] => Gradients.FirstOrDefault(g => g.Name == name)?.Data
        ?? throw new KeyNotFoundException($"no gradient '{name}' (have {string.Join(", ", Gradients.Select(g => g.Name))})");

    /// <summary>
    /// The gradients' names for a method with <paramref name="keyTensors"/> key and value tensors: <c>dq, dk, dv</c> for one,
    /// <c>dq, dk1, dk2, dv1, dv2</c> for two (tensor attention).
    /// </summary>
    /// <param name="keyTensors">How many key (and value) tensors the method takes.</param>
    /// <returns>The names, in input order.</returns>
    public static IReadOnlyList<string> NamesOf(int keyTensors) => keyTensors == 1
        ? ["dq", "dk", "dv"]
        : [.. new[] { "dq" }.Concat(Enumerable.Range(1, keyTensors).Select(t => $"dk{t}")).Concat(Enumerable.Range(1, keyTensors).Select(t => $"dv{t}"))];
}

/// <summary>
/// Runs a method's training forward (the forward that also returns what the backward needs: each row's log-sum-exp, the
/// kept keys) on <paramref name="inputs"/>, then its backward with <paramref name="outputGradient"/>, and returns the
/// gradients with respect to every input, the flops of both passes and their times.
/// </summary>
/// <param name="inputs">Queries, keys, values.</param>
/// <param name="shape">The dimensions (tensor methods: one key/value head per query head).</param>
/// <param name="outputGradient">dO, the loss's gradient with respect to the output, <c>[batch, heads, nq, dv]</c>.</param>
/// <param name="settings">The method's settings (the forward's and the backward's).</param>
/// <returns>The gradients and the figures of both passes.</returns>
public delegate MethodGradients MethodBackward(MethodInputs inputs, AttentionShape shape, ReadOnlyMemory<float> outputGradient, MethodSettings settings);
