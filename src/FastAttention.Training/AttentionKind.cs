using FastAttention.TorchSharp;

namespace FastAttention.Training;

/// <summary>The attention a <see cref="VisionTransformer"/> trains or evaluates with.</summary>
public enum AttentionKind
{
    /// <summary>Softmax over all keys, on FastAttention's exact kernels.</summary>
    Softmax,

    /// <summary>LevAttention: per head the top-k keys by leverage score (recomputed every call) plus the CLS token.</summary>
    Lev,

    /// <summary>k uniformly random keys per head and step, plus the CLS token.</summary>
    Random,

    /// <summary>The k keys of largest norm per head, plus the CLS token.</summary>
    Norm,

    /// <summary>Sketched degree-4 polynomial attention (PolySketchFormer).</summary>
    Sketch,

    /// <summary>Softmax on TorchSharp's own <c>scaled_dot_product_attention</c> (the speed peer).</summary>
    Torch,
}

/// <summary>An attention choice: the kind and, for the selecting kinds, how many keys each query sees.</summary>
/// <param name="Kind">The kind.</param>
/// <param name="Top">Keys kept per head besides the CLS token (lev, random, norm).</param>
/// <param name="SketchSize">The sketch size m (sketch): m(m+1)/2 features per head; 16 keeps a training step within ~3x of softmax's at head dim 32.</param>
public readonly record struct AttentionChoice(AttentionKind Kind, int Top = 32, int SketchSize = 16)
{
    /// <summary>The command-line names of the kinds.</summary>
    public static IReadOnlyList<string> Names { get; } = ["softmax", "lev", "random", "norm", "sketch", "torch"];

    /// <summary>Parses a command-line name.</summary>
    /// <param name="name">One of <see cref="Names"/>.</param>
    /// <param name="top">Keys kept per head (lev, random, norm).</param>
    /// <returns>The choice.</returns>
    /// <exception cref="ArgumentException">An unknown name or a top below 1 (the message lists the names).</exception>
    public static AttentionChoice Parse(string name, int top = 32)
    {
        ArgumentNullException.ThrowIfNull(name);
        int index = Names.ToList().IndexOf(name.ToLowerInvariant());
        if (index < 0)
        {
            throw new ArgumentException($"unknown attention '{name}'; expected one of {string.Join(", ", Names)}", nameof(name));
        }

        if (top < 1)
        {
            throw new ArgumentException($"top must be at least 1, not {top}", nameof(top));
        }

        return new AttentionChoice((AttentionKind)index, top);
    }

    /// <summary>The command-line name of the kind.</summary>
    public string Name => Names[(int)Kind];

    /// <summary>A label such as <c>lev top-32</c>.</summary>
    public override string ToString() => Kind is AttentionKind.Lev or AttentionKind.Random or AttentionKind.Norm ? $"{Name} top-{Top}" : Name;

    /// <summary>Makes the operator of one block.</summary>
    /// <param name="block">The block index (seeds the random draws).</param>
    /// <param name="seed">The run's seed.</param>
    /// <returns>A new attention module.</returns>
    public AttentionModule Create(int block, long seed) => Kind switch
    {
        AttentionKind.Softmax => new SoftmaxAttentionModule(),
        AttentionKind.Lev => new LevAttentionModule(top: Top, keepFirst: 1),
        AttentionKind.Random => new RandomKeysAttention(Top, 1, seed * 131 + block),
        AttentionKind.Norm => new LargestNormKeysAttention(Top, 1),
        AttentionKind.Sketch => new SketchedAttentionModule(SketchSize, seed * 131 + block),
        _ => new TorchSdpaModule(),
    };
}
