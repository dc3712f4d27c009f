using System.Runtime.Intrinsics;

namespace FastAttention.Kernels;

/// <summary>An attention kernel: a name, whether this CPU can run it, and the entry point.</summary>
internal sealed record AttentionKernel(string Name, string Description, Func<bool> IsSupported, Action<AttentionArgs> Run)
{
    /// <summary>Why this kernel cannot run here, or <see langword="null"/> when it can.</summary>
    public string? WhyNot() => IsSupported() ? null : $"{Name}: this CPU does not accelerate the vector width it needs";
}

/// <summary>
/// The ordered list of kernels per operation, fastest first. Selection takes the first one the CPU
/// supports unless a kernel is forced by option or by the <c>FASTATTN_KERNEL</c> environment variable.
/// Tests, benchmarks and the CLI enumerate the same list.
/// </summary>
internal static class KernelRegistry
{
    /// <summary>The environment variable that forces a kernel by name.</summary>
    public const string EnvironmentVariable = "FASTATTN_KERNEL";

    /// <summary>Exact softmax (and power) attention kernels, fastest first.</summary>
    public static IReadOnlyList<AttentionKernel> Attention { get; } =
    [
        new("tiled-v512", "tiled online softmax, 512-bit vectors (AVX-512)", () => Simd512.IsSupported, TiledAttention<Simd512, Vector512<float>>.Run),
        new("tiled-v256", "tiled online softmax, 256-bit vectors (AVX2)", () => Simd256.IsSupported, TiledAttention<Simd256, Vector256<float>>.Run),
        new("tiled-scalar", "tiled online softmax, scalar (any CPU)", () => SimdScalar.IsSupported, TiledAttention<SimdScalar, float>.Run),
    ];

    /// <summary>The kernels this CPU can run.</summary>
    public static IEnumerable<AttentionKernel> Supported => Attention.Where(k => k.IsSupported());

    /// <summary>Picks the kernel: <paramref name="forced"/>, else the environment variable, else the fastest supported.</summary>
    /// <exception cref="ArgumentException">The forced name is unknown.</exception>
    /// <exception cref="NotSupportedException">The forced kernel cannot run on this CPU, or none can.</exception>
    public static AttentionKernel Select(string? forced)
    {
        string? name = string.IsNullOrWhiteSpace(forced) ? Environment.GetEnvironmentVariable(EnvironmentVariable) : forced;
        if (string.IsNullOrWhiteSpace(name))
        {
            return Supported.FirstOrDefault()
                ?? throw new NotSupportedException("No attention kernel fits: " + string.Join("; ", Attention.Select(k => k.WhyNot())));
        }

        AttentionKernel? kernel = Attention.FirstOrDefault(k => string.Equals(k.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));
        if (kernel is null)
        {
            string source = string.IsNullOrWhiteSpace(forced) ? $"environment variable {EnvironmentVariable}" : "option Kernel";
            throw new ArgumentException(
                $"Unknown kernel '{name}' (from {source}). Known kernels: {string.Join(", ", Attention.Select(k => k.Name))}.", nameof(forced));
        }

        return kernel.WhyNot() is string reason ? throw new NotSupportedException($"Kernel cannot run: {reason}.") : kernel;
    }
}
