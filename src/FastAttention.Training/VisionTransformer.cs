using FastAttention.TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace FastAttention.Training;

/// <summary>The shape of a <see cref="VisionTransformer"/>.</summary>
/// <param name="Patch">The patch side in pixels; 2 makes 196 patches of a 28x28 image, plus the CLS token 197 tokens.</param>
/// <param name="Dim">The token width.</param>
/// <param name="Depth">The number of transformer blocks.</param>
/// <param name="Heads">The attention heads per block (head dim = Dim / Heads).</param>
/// <param name="MlpDim">The hidden width of each block's MLP.</param>
public readonly record struct VitConfig(int Patch = 2, int Dim = 64, int Depth = 2, int Heads = 2, int MlpDim = 128)
{
    /// <summary>The default model (<c>new VitConfig()</c> without arguments is all zeros; use this).</summary>
    public static VitConfig Default { get; } = new(Patch: 2);

    /// <summary>Tokens per image: the patches plus the CLS token.</summary>
    public int Tokens => (MnistData.Side / Patch) * (MnistData.Side / Patch) + 1;

    /// <summary>The number of parameters (floats) of the model.</summary>
    public long ParameterCount
    {
        get
        {
            long dim = Dim, mlp = MlpDim;
            long block = (4 * dim) + (3 * dim * dim) + (3 * dim) + (dim * dim) + dim + (mlp * dim) + mlp + (dim * mlp) + dim;
            return (dim * Patch * Patch) + dim + dim + ((long)Tokens * dim) + (Depth * block) + (2 * dim) + (MnistData.Classes * dim) + MnistData.Classes;
        }
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the field that cannot make a model.</summary>
    public void Validate()
    {
        if (Patch < 1 || MnistData.Side % Patch != 0)
        {
            throw new ArgumentException($"patch {Patch} must divide the image side {MnistData.Side}.", nameof(Patch));
        }

        if (Dim < 1 || Heads < 1 || Dim % Heads != 0)
        {
            throw new ArgumentException($"dim {Dim} must be a positive multiple of heads {Heads}.", nameof(Dim));
        }

        if (Depth < 1 || MlpDim < 1)
        {
            throw new ArgumentException($"depth {Depth} and mlp dim {MlpDim} must be positive.", nameof(Depth));
        }
    }
}

/// <summary>
/// A Vision Transformer for 28x28 greyscale digits: patch embedding (a stride-<c>patch</c> convolution), a CLS token,
/// learned positions, pre-norm blocks (<c>x + attn(norm1(x))</c>, <c>x + mlp(norm2(x))</c>, GELU MLP), a final norm and a
/// linear head on the CLS token. Parameter names follow timm's ViT (<c>patch_embed.proj.weight</c>, <c>cls_token</c>,
/// <c>pos_embed</c>, <c>blocks.0.attn.qkv.weight</c>, ..., <c>head.bias</c>), so a checkpoint loads in Python by name.
/// </summary>
public sealed class VisionTransformer : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> patchEmbed;
    private readonly Parameter clsToken;
    private readonly Parameter posEmbed;
    private readonly global::TorchSharp.Modules.ModuleList<Block> blocks;
    private readonly nn.Module<Tensor, Tensor> norm;
    private readonly nn.Module<Tensor, Tensor> head;

    /// <summary>Creates the model, initialised from torch's generator (seed it with <c>torch.manual_seed</c> first).</summary>
    /// <param name="config">The shape.</param>
    /// <param name="attention">Makes the attention operator of block <c>i</c> (each block gets its own instance).</param>
    public VisionTransformer(VitConfig config, Func<int, AttentionModule> attention)
        : base(nameof(VisionTransformer))
    {
        config.Validate();
        ArgumentNullException.ThrowIfNull(attention);
        Config = config;
        patchEmbed = new PatchEmbed(config.Patch, config.Dim);
        clsToken = new Parameter(zeros(1, 1, config.Dim));
        posEmbed = new Parameter(zeros(1, config.Tokens, config.Dim));
        blocks = nn.ModuleList([.. Enumerable.Range(0, config.Depth).Select(i => new Block(config, attention(i)))]);
        norm = nn.LayerNorm(config.Dim);
        head = nn.Linear(config.Dim, MnistData.Classes);
        register_module("patch_embed", patchEmbed);
        register_parameter("cls_token", clsToken);
        register_parameter("pos_embed", posEmbed);
        register_module("blocks", blocks);
        register_module("norm", norm);
        register_module("head", head);
        using (no_grad())
        {
            // Positions start as a fixed 2-D sine-cosine table like MAE's (row coordinate first; the CLS position at zero) and are learned from there:
            // with timm's small random start a model of 2x2 patches spends its first hundreds of steps learning where a
            // patch is. The rest is timm's initialisation: a normal of std 0.02 cut at two deviations for CLS and linear
            // weights, zero biases. (Clamped, not redrawn: TorchSharp 0.107's trunc_normal_ leaves the tensor at ~0.)
            using var table = SineCosinePositions(MnistData.Side / config.Patch, config.Dim);
            posEmbed.copy_(table);
            TruncatedNormal(clsToken);
            foreach (var (name, parameter) in named_parameters())
            {
                if (name.EndsWith(".weight", StringComparison.Ordinal) && parameter.dim() == 2)
                {
                    TruncatedNormal(parameter);
                }
                else if (name.EndsWith(".bias", StringComparison.Ordinal) && !name.Contains("norm", StringComparison.Ordinal))
                {
                    parameter.zero_();
                }
            }
        }
    }

    /// <summary>The model's shape.</summary>
    public VitConfig Config { get; }

    /// <summary>The attention operator of each block, in block order.</summary>
    public IReadOnlyList<AttentionModule> Attention => [.. blocks.Select(b => b.Attn.Attention)];

    /// <summary>Replaces every block's attention operator (the weights are unchanged).</summary>
    /// <param name="attention">Makes the operator of block <c>i</c>.</param>
    public void SetAttention(Func<int, AttentionModule> attention)
    {
        ArgumentNullException.ThrowIfNull(attention);
        for (int i = 0; i < blocks.Count; i++)
        {
            blocks[i].Attn.Attention = attention(i);
        }
    }

    /// <summary>Class logits.</summary>
    /// <param name="input">Images, <c>[batch, 1, 28, 28]</c>, normalised as <see cref="MnistData"/> does.</param>
    /// <returns><c>[batch, 10]</c>.</returns>
    public override Tensor forward(Tensor input)
    {
        long batch = input.size(0);
        var x = patchEmbed.forward(input);                          // [batch, tokens - 1, dim]
        x = cat([clsToken.expand(batch, -1, -1), x], 1) + posEmbed;  // [batch, tokens, dim]
        foreach (var block in blocks)
        {
            x = block.forward(x);
        }

        return head.forward(norm.forward(x).select(1, 0));
    }

    /// <summary>
    /// 2-D sine-cosine positions as MAE's (which puts the column coordinate first), <c>[1, 1 + side^2, dim]</c>: row 0 (CLS) zero; patch (r, c) gets, in its first half,
    /// <c>sin(r w_t), cos(r w_t)</c> and in its second half the same of <c>c</c>, with <c>w_t = 10000^(-t / (dim / 4))</c>.
    /// Widths that are not a multiple of 4 leave the last columns zero.
    /// </summary>
    private static Tensor SineCosinePositions(int side, int dim)
    {
        var table = new float[(1 + side * side) * dim];
        int quarter = dim / 4;
        for (int r = 0; r < side; r++)
        {
            for (int c = 0; c < side; c++)
            {
                int row = (1 + r * side + c) * dim;
                for (int t = 0; t < quarter; t++)
                {
                    double w = Math.Pow(10000, -(double)t / quarter);
                    table[row + t] = (float)Math.Sin(r * w);
                    table[row + quarter + t] = (float)Math.Cos(r * w);
                    table[row + 2 * quarter + t] = (float)Math.Sin(c * w);
                    table[row + 3 * quarter + t] = (float)Math.Cos(c * w);
                }
            }
        }

        return tensor(table, [1, 1 + side * side, dim]);
    }

    private static void TruncatedNormal(Tensor parameter) => nn.init.normal_(parameter, 0, 0.02).clamp_(-0.04, 0.04);

    /// <summary>Patch embedding: a <c>patch x patch</c> convolution with stride <c>patch</c>, flattened to tokens.</summary>
    private sealed class PatchEmbed : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> proj;

        public PatchEmbed(int patch, int dim)
            : base(nameof(PatchEmbed))
        {
            proj = nn.Conv2d(1, dim, patch, stride: patch);
            register_module("proj", proj);
        }

        // [batch, 1, 28, 28] -> [batch, dim, 28 / p, 28 / p] -> [batch, (28 / p)^2, dim]
        public override Tensor forward(Tensor input) => proj.forward(input).flatten(2).transpose(1, 2);
    }

    /// <summary>One pre-norm transformer block.</summary>
    private sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> norm1;
        private readonly nn.Module<Tensor, Tensor> norm2;
        private readonly Mlp mlp;

        public Block(VitConfig config, AttentionModule attention)
            : base(nameof(Block))
        {
            norm1 = nn.LayerNorm(config.Dim);
            Attn = new MultiheadSelfAttention(config.Dim, config.Heads, attention);
            norm2 = nn.LayerNorm(config.Dim);
            mlp = new Mlp(config.Dim, config.MlpDim);
            register_module("norm1", norm1);
            register_module("attn", Attn);
            register_module("norm2", norm2);
            register_module("mlp", mlp);
        }

        public MultiheadSelfAttention Attn { get; }

        public override Tensor forward(Tensor input)
        {
            var x = input + Attn.forward(norm1.forward(input));
            return x + mlp.forward(norm2.forward(x));
        }
    }

    /// <summary>The block MLP: <c>fc2(gelu(fc1(x)))</c>.</summary>
    private sealed class Mlp : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> fc1;
        private readonly nn.Module<Tensor, Tensor> fc2;

        public Mlp(int dim, int hidden)
            : base(nameof(Mlp))
        {
            fc1 = nn.Linear(dim, hidden);
            fc2 = nn.Linear(hidden, dim);
            register_module("fc1", fc1);
            register_module("fc2", fc2);
        }

        public override Tensor forward(Tensor input) => fc2.forward(nn.functional.gelu(fc1.forward(input)));
    }
}
