using System.Runtime.Intrinsics;

namespace FastAttention.Kernels;

/// <summary>What a kernel says about an input it cannot take: the reason, or <see langword="null"/> when it can.</summary>
internal delegate string? InputCheck(in AttentionArgs args);

/// <summary>An attention kernel: a name, whether this CPU can run it, which inputs it takes, and the entry point.</summary>
internal sealed record AttentionKernel(string Name, string Description, Func<bool> IsSupported, Action<AttentionArgs> Run, InputCheck? Rejects = null, bool ChecksFinite = false)
{
    /// <summary>Why this kernel cannot run here, or <see langword="null"/> when it can.</summary>
    public string? WhyNot() => IsSupported() ? null : $"{Name}: this CPU does not accelerate the vector width it needs";

    /// <summary>Why this kernel cannot run this input here, or <see langword="null"/> when it can.</summary>
    public string? WhyNot(in AttentionArgs args) => WhyNot() ?? (Rejects?.Invoke(in args) is string reason ? $"{Name}: {reason}" : null);
}

/// <summary>A backward kernel: a name (that of the forward kernel of the same width), whether this CPU can run it, and the entry point.</summary>
internal sealed record BackwardKernel(string Name, string Description, Func<bool> IsSupported, Action<BackwardArgs> Run);

/// <summary>
/// The ordered list of kernels per operation, fastest first. Selection takes the first one the CPU
/// supports unless a kernel is forced by option or by the <c>FASTATTN_KERNEL</c> environment variable.
/// Tests, benchmarks and the CLI enumerate the same list.
/// </summary>
internal static class KernelRegistry
{
    /// <summary>The environment variable that forces a kernel by name.</summary>
    public const string EnvironmentVariable = "FASTATTN_KERNEL";

    /// <summary>
    /// The split-key decoding kernel of one vector width reading one storage type: named <c>splitkey-{width}</c> for float32 (contiguous or
    /// paged, with or without a window) and <c>splitkey-{width}-{type}</c> for the others; it rejects keys and values of any other type.
    /// </summary>
    private static AttentionKernel SplitKey<TS, TV, TE>(string width, string vectors, Func<bool> isSupported)
        where TS : struct, ISimd<TV>
        where TV : struct
        where TE : struct, IKvElement
    {
        string type = KvElementTypes.Name(TE.Type);
        string name = TE.Type == KvElementType.Float32 ? $"splitkey-{width}" : $"splitkey-{width}-{type}";
        return new(name, $"decoding (at most 16 queries per head): keys split in fixed chunks, partials merged; {type} keys and values, {vectors}",
            isSupported, SplitKeyAttention<TS, TV, TE>.Run, SplitKeyAttention<TS, TV, TE>.Rejects, ChecksFinite: true);
    }

    /// <summary>
    /// A tiled kernel per storage type, in the order f32 (the plain name), f16, bf16, q8 (the name with the type's suffix). Each reads
    /// its type contiguous or in pages, with or without a sliding window; the widening is in its packing, so one entry point serves all.
    /// </summary>
    private static IEnumerable<AttentionKernel> Tiled(string name, string vectors, Func<bool> isSupported, Action<AttentionArgs> run) =>
        Enum.GetValues<KvElementType>().Select(type => new AttentionKernel(
            type == KvElementType.Float32 ? name : $"{name}-{KvElementTypes.Name(type)}",
            $"tiled online softmax, {KvElementTypes.Name(type)} keys and values (widened as packed), {vectors}",
            isSupported,
            run,
            (in AttentionArgs a) => StorageMismatch(in a, type)));

    /// <summary>Why a kernel reading <paramref name="type"/> cannot take these keys and values (stored in another type), or null.</summary>
    public static string? StorageMismatch(in AttentionArgs a, KvElementType type)
    {
        KvOperand keys = a.Keys, values = a.Values;
        return keys.Type != type || values.Type != type
            ? $"{(keys.Type != type ? "keys" : "values")} are {KvElementTypes.Name(keys.Type != type ? keys.Type : values.Type)}; this kernel reads {KvElementTypes.Name(type)}"
            : null;
    }

    /// <summary>Exact softmax (and power) attention kernels, fastest first.</summary>
    public static IReadOnlyList<AttentionKernel> Attention { get; } =
    [
        SplitKey<Simd512, Vector512<float>, KvFloat32>("v512", "512-bit vectors", () => Simd512.IsSupported),
        SplitKey<Simd512, Vector512<float>, KvFloat16>("v512", "512-bit vectors", () => Simd512.IsSupported),
        SplitKey<Simd512, Vector512<float>, KvBFloat16>("v512", "512-bit vectors", () => Simd512.IsSupported),
        SplitKey<Simd512, Vector512<float>, KvQ8>("v512", "512-bit vectors", () => Simd512.IsSupported),
        SplitKey<Simd256, Vector256<float>, KvFloat32>("v256", "256-bit vectors", () => Simd256.IsSupported),
        SplitKey<Simd256, Vector256<float>, KvFloat16>("v256", "256-bit vectors", () => Simd256.IsSupported),
        SplitKey<Simd256, Vector256<float>, KvBFloat16>("v256", "256-bit vectors", () => Simd256.IsSupported),
        SplitKey<Simd256, Vector256<float>, KvQ8>("v256", "256-bit vectors", () => Simd256.IsSupported),
        .. Tiled("tiled-v512", "512-bit vectors (AVX-512)", () => Simd512.IsSupported, TiledAttention<Simd512, Vector512<float>>.Run),
        .. Tiled("tiled-v256", "256-bit vectors (AVX2)", () => Simd256.IsSupported, TiledAttention<Simd256, Vector256<float>>.Run),
        .. Tiled("tiled-scalar", "scalar (any CPU)", () => SimdScalar.IsSupported, TiledAttention<SimdScalar, float>.Run),
    ];

    /// <summary>
    /// Exact softmax (and power) backward kernels, fastest first. Each is named after the tiled forward kernel of its width, so one
    /// forced name picks the same width forward and backward; a forced split-key (decoding) kernel picks the tiled backward of its width.
    /// </summary>
    public static IReadOnlyList<BackwardKernel> Backward { get; } =
    [
        new("tiled-v512", "FlashAttention-2 backward: key blocks with fixed dQ partials, 512-bit vectors (AVX-512)", () => Simd512.IsSupported, TiledAttentionBackward<Simd512, Vector512<float>>.Run),
        new("tiled-v256", "FlashAttention-2 backward: key blocks with fixed dQ partials, 256-bit vectors (AVX2)", () => Simd256.IsSupported, TiledAttentionBackward<Simd256, Vector256<float>>.Run),
        new("tiled-scalar", "FlashAttention-2 backward: key blocks with fixed dQ partials, scalar (any CPU)", () => SimdScalar.IsSupported, TiledAttentionBackward<SimdScalar, float>.Run),
    ];

    /// <summary>Picks the backward kernel: <paramref name="forced"/>, else the environment variable, else the first this CPU runs.</summary>
    /// <exception cref="ArgumentException">The forced name is no kernel's.</exception>
    /// <exception cref="NotSupportedException">The forced kernel's vector width is not accelerated here.</exception>
    public static BackwardKernel SelectBackward(string? forced)
    {
        string? name = string.IsNullOrWhiteSpace(forced) ? Environment.GetEnvironmentVariable(EnvironmentVariable) : forced;
        if (string.IsNullOrWhiteSpace(name))
        {
            return Backward.First(k => k.IsSupported());
        }

        string wanted = name.Trim();
        if (wanted.StartsWith("splitkey-", StringComparison.OrdinalIgnoreCase))
        {
            wanted = "tiled-" + wanted["splitkey-".Length..];
        }

        BackwardKernel? kernel = Backward.FirstOrDefault(k => string.Equals(k.Name, wanted, StringComparison.OrdinalIgnoreCase));
        if (kernel is null)
        {
            string source = string.IsNullOrWhiteSpace(forced) ? $"environment variable {EnvironmentVariable}" : "option Kernel";
            throw new ArgumentException(
                $"Unknown kernel '{name}' (from {source}). Known kernels: {string.Join(", ", Attention.Select(k => k.Name))}.", "options");
        }

        return kernel.IsSupported() ? kernel : throw new NotSupportedException($"Kernel cannot run: {kernel.Name}: this CPU does not accelerate the vector width it needs.");
    }

    /// <summary>The kernels that run on this CPU and take inputs of this shape (ignoring masks and values).</summary>
    public static IEnumerable<AttentionKernel> For(AttentionShape shape)
    {
        var args = AttentionArgs.FromShape(shape);
        return Attention.Where(k => k.WhyNot(in args) is null).ToList();
    }

    /// <summary>Picks the kernel: <paramref name="forced"/>, else the environment variable, else the first in registry order that takes the input.</summary>
    /// <exception cref="ArgumentException">The forced name is unknown.</exception>
    /// <exception cref="NotSupportedException">The forced kernel cannot run this input on this CPU, or no kernel can; the message lists the reasons.</exception>
    public static AttentionKernel Select(string? forced, in AttentionArgs args)
    {
        string? name = string.IsNullOrWhiteSpace(forced) ? Environment.GetEnvironmentVariable(EnvironmentVariable) : forced;
        if (string.IsNullOrWhiteSpace(name))
        {
            foreach (AttentionKernel candidate in Attention)
            {
                if (candidate.WhyNot(in args) is null)
                {
                    return candidate;
                }
            }

            var reasons = new List<string>();
            foreach (AttentionKernel candidate in Attention)
            {
                reasons.Add(candidate.WhyNot(in args)!);
            }

            throw new NotSupportedException("No attention kernel fits: " + string.Join("; ", reasons));
        }

        AttentionKernel? kernel = Attention.FirstOrDefault(k => string.Equals(k.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));
        if (kernel is null)
        {
            string source = string.IsNullOrWhiteSpace(forced) ? $"environment variable {EnvironmentVariable}" : "option Kernel";
            throw new ArgumentException(
                $"Unknown kernel '{name}' (from {source}). Known kernels: {string.Join(", ", Attention.Select(k => k.Name))}.", "options");
        }

        return kernel.WhyNot(in args) is string reason ? throw new NotSupportedException($"Kernel cannot run: {reason}.") : kernel;
    }
}
