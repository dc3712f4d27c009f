using FastAttention.Kernels;

namespace FastAttention;

/// <summary>One exact-attention kernel of the registry, as a user sees it.</summary>
/// <param name="Name">The name that forces it (<see cref="ExactAttentionOptions.Kernel"/>, <c>--kernel</c>, or the <see cref="AttentionKernels.EnvironmentVariable"/> variable).</param>
/// <param name="Description">What it does and which inputs it takes.</param>
/// <param name="IsSupported">Whether this CPU accelerates the vector width it needs.</param>
public sealed record KernelInfo(string Name, string Description, bool IsSupported);

/// <summary>
/// The exact (and power) attention kernels, fastest first: the list <see cref="ExactAttention"/> chooses from
/// (the first that this CPU runs and that takes the input), which tests, benchmarks and the CLI enumerate.
/// </summary>
public static class AttentionKernels
{
    /// <summary>The environment variable that forces a kernel by name when no option does.</summary>
    public const string EnvironmentVariable = KernelRegistry.EnvironmentVariable;

    /// <summary>Every kernel, fastest first, whether or not this CPU runs it.</summary>
    public static IReadOnlyList<KernelInfo> All { get; } = KernelRegistry.Attention.Select(Info).ToArray();

    /// <summary>Every kernel's name, fastest first.</summary>
    public static IReadOnlyList<string> Names { get; } = KernelRegistry.Attention.Select(k => k.Name).ToArray();

    /// <summary>
    /// The backward kernels (<see cref="ExactAttention.Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, Span{float}, ExactAttentionOptions)"/>,
    /// <see cref="PowerAttention.Backward"/>), fastest first, whether or not this CPU runs them. Each has the name of the tiled forward kernel of
    /// its vector width, so one forced name sets both passes; a forced split-key name picks the tiled backward of its width.
    /// </summary>
    public static IReadOnlyList<KernelInfo> Backward { get; } = KernelRegistry.Backward.Select(k => new KernelInfo(k.Name, k.Description, k.IsSupported())).ToArray();

    /// <summary>The kernels that run on this CPU and take inputs of this shape (masks and values aside), fastest first.</summary>
    /// <param name="shape">The attention's shape.</param>
    /// <returns>The kernels, fastest first; the first is the one chosen when none is forced.</returns>
    public static IReadOnlyList<KernelInfo> For(AttentionShape shape) => KernelRegistry.For(shape).Select(Info).ToArray();

    private static KernelInfo Info(AttentionKernel kernel) => new(kernel.Name, kernel.Description, kernel.IsSupported());
}
