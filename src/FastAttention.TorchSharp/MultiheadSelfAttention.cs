using static TorchSharp.torch;

namespace FastAttention.TorchSharp;

/// <summary>
/// Multi-head self-attention with a swappable attention operator: <c>[batch, n, dim]</c> to <c>[batch, n, dim]</c> through
/// one fused projection <c>qkv</c> (<c>[3 dim, dim]</c>, PyTorch/timm's layout: rows are q, k, v, each split into heads), the
/// <see cref="Attention"/> over <c>[batch, heads, n, dim / heads]</c>, and the output projection <c>proj</c>. Parameter names
/// are <c>qkv.weight</c>, <c>qkv.bias</c>, <c>proj.weight</c>, <c>proj.bias</c>, as in timm's ViT.
/// </summary>
public sealed class MultiheadSelfAttention : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> qkv;
    private readonly nn.Module<Tensor, Tensor> proj;
    private readonly int heads;

    /// <summary>Creates the projections (TorchSharp's default initialisation, drawn from torch's generator).</summary>
    /// <param name="dim">The model width; a multiple of <paramref name="heads"/>.</param>
    /// <param name="heads">The number of attention heads.</param>
    /// <param name="attention">The attention operator (parameterless); replaceable through <see cref="Attention"/>.</param>
    /// <param name="name">The module's name.</param>
    /// <exception cref="ArgumentException"><paramref name="dim"/> or <paramref name="heads"/> not positive, or heads not dividing dim.</exception>
    public MultiheadSelfAttention(int dim, int heads, AttentionModule attention, string name = nameof(MultiheadSelfAttention))
        : base(name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        ArgumentNullException.ThrowIfNull(attention);
        if (dim % heads != 0)
        {
            throw new ArgumentException($"dim {dim} must be a multiple of heads {heads}.", nameof(dim));
        }

        this.heads = heads;
        qkv = nn.Linear(dim, 3 * dim);
        proj = nn.Linear(dim, dim);
        Attention = attention;
        register_module("qkv", qkv);
        register_module("proj", proj);
    }

    /// <summary>The attention operator; set it to evaluate or fine-tune the same weights with another attention.</summary>
    public AttentionModule Attention { get; set; }

    /// <summary>Self-attention over the tokens.</summary>
    /// <param name="input">Tokens, <c>[batch, n, dim]</c>.</param>
    /// <returns><c>[batch, n, dim]</c>.</returns>
    public override Tensor forward(Tensor input)
    {
        long batch = input.size(0), n = input.size(1), dim = input.size(2);
        // [batch, n, 3 dim] -> [3, batch, heads, n, dim / heads]
        using var parts = qkv.forward(input).view(batch, n, 3, heads, dim / heads).permute(2, 0, 3, 1, 4);
        using var q = parts[0];
        using var k = parts[1];
        using var v = parts[2];
        using var attended = Attention.forward(q, k, v);
        using var merged = attended.transpose(1, 2).reshape(batch, n, dim);
        return proj.forward(merged);
    }
}
