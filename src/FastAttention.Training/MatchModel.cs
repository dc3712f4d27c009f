using FastAttention.TorchSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>The attention a <see cref="MatchModel"/> layer uses.</summary>
public enum MatchAttention
{
    /// <summary>Order-3 tensor (2-simplicial) attention on FastAttention's kernels: each query scores every pair of keys.</summary>
    Tensor,

    /// <summary>Pairwise softmax attention on FastAttention's exact kernels.</summary>
    Softmax,
}

/// <summary>The shape of a <see cref="MatchModel"/>.</summary>
/// <param name="Attention">Tensor or softmax attention.</param>
/// <param name="HeadDim">d, each head's width.</param>
/// <param name="Heads">Attention heads per layer.</param>
/// <param name="Layers">Attention layers.</param>
/// <param name="Frequencies">F, the fixed Fourier frequencies of the value embedding; the token width is <c>2 F</c>.</param>
/// <param name="Hidden">The per-position classifier's hidden width.</param>
/// <param name="Causal">Position i attends to positions j &lt;= i only.</param>
/// <param name="Window">Tensor attention's sliding windows <c>(w1, w2)</c> (imply causal); null means none.</param>
/// <param name="Scale">The score scale; null means the attention's default (<c>1 / d</c> for tensor, <c>1 / sqrt(d)</c> for softmax).</param>
public readonly record struct MatchModelConfig(
    MatchAttention Attention, int HeadDim = 64, int Heads = 1, int Layers = 1, int Frequencies = 32, int Hidden = 128,
    bool Causal = false, (int First, int Second)? Window = null, double? Scale = null)
{
    /// <summary>The model variants the experiment compares, all of width 64.</summary>
    /// <param name="name"><c>tensor</c> (one tensor head, d = 64), <c>softmax</c> (one softmax head, d = 64), <c>softmax-heads</c> (3 softmax heads
    /// of d = 32: the tensor head's parameter count), <c>softmax-2layer</c> (two layers of one softmax head, d = 64).</param>
    /// <returns>The shape.</returns>
    public static MatchModelConfig Variant(string name) => name switch
    {
        "tensor" => new(MatchAttention.Tensor),
        "softmax" => new(MatchAttention.Softmax),
        "softmax-heads" => new(MatchAttention.Softmax, HeadDim: 32, Heads: 3),
        "softmax-2layer" => new(MatchAttention.Softmax, Layers: 2),
        _ => throw new ArgumentException($"unknown model variant '{name}' (tensor, softmax, softmax-heads, softmax-2layer).", nameof(name)),
    };

    /// <summary>The variant names <see cref="Variant"/> knows.</summary>
    public static IReadOnlyList<string> Variants { get; } = ["tensor", "softmax", "softmax-heads", "softmax-2layer"];

    /// <summary>D, the token width: the cosine and sine of each frequency (the same for every model compared).</summary>
    public int Width => 2 * Frequencies;

    /// <summary>Projections per head: q, k1, k2, v1, v2 for tensor attention; q, k, v for softmax.</summary>
    public int Projections => Attention == MatchAttention.Tensor ? 5 : 3;

    /// <summary>The number of trained parameters (floats).</summary>
    public long ParameterCount
    {
        get
        {
            long width = Width, inner = (long)Heads * HeadDim;
            long layer = (width * Projections * inner) + (inner * width) + Heads;
            long head = (2 * width) + (width * Hidden) + Hidden + Hidden + 1;
            return (Layers * layer) + head;
        }
    }

    /// <summary>The parameters of the attention layers alone (projections in and out).</summary>
    public long AttentionParameterCount => Layers * (((long)Heads * HeadDim * Width * (Projections + 1)) + Heads);

    /// <summary>Throws an <see cref="ArgumentException"/> naming the field that cannot make a model.</summary>
    public void Validate()
    {
        if (HeadDim < 1 || Heads < 1 || Layers < 1 || Frequencies < 1 || Hidden < 1)
        {
            throw new ArgumentException($"head dim {HeadDim}, heads {Heads}, layers {Layers}, frequencies {Frequencies} and hidden {Hidden} must all be positive.", nameof(Width));
        }

        if (Window is { } w && (w.First < 1 || w.Second < 1))
        {
            throw new ArgumentException($"windows ({w.First}, {w.Second}) must be at least 1.", nameof(Window));
        }

        if (Window is not null && Attention != MatchAttention.Tensor)
        {
            throw new ArgumentException("windows apply to tensor attention only.", nameof(Window));
        }
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{(Attention == MatchAttention.Tensor ? "tensor" : "softmax")} {Layers}x{Heads}x{HeadDim} (width {Width} = 2 x {Frequencies} frequencies{(Window is { } w ? $", window=({w.First}, {w.Second})" : Causal ? ", causal" : "")})";
}

/// <summary>
/// A per-position classifier for <see cref="MatchTask"/>s. Each value is embedded by fixed Fourier features
/// <c>cos, sin(2 pi f x / M)</c> at F frequencies drawn once from <c>1..(M-1)/2</c> (the token embedding, width <c>D = 2 F</c>;
/// a learned linear map in front of the projections only slowed learning: see docs/training.md). Attention layers add <c>out(attn(h))</c> to the stream. Each head also reports its log-sum-exp
/// <c>L_i</c> (how strongly query i matches its best keys or key pairs; an attention sink reads the same quantity), less the log
/// of the keys or pairs the query sees (a log-mean-exp, so a model trained at one length reads the same at another), which goes
/// to the logit through a learned weight per head, beside a GELU MLP on the normalised stream:
/// <c>logit_i = mlp(norm(h_i)) + sum_heads a_h (L_h,i - ln visible_i)</c>. No positions are embedded: the task does not depend on order (the
/// causal variant's order comes from the mask). Tensor heads run on FastAttention's kernels (forward and backward, log-sum-exp
/// included); softmax heads on libtorch's operations.
/// </summary>
public sealed class MatchModel : nn.Module<Tensor, Tensor>
{
    private readonly Tensor frequencies;
    private readonly global::TorchSharp.Modules.ModuleList<Layer> layers;
    private readonly nn.Module<Tensor, Tensor> norm;
    private readonly nn.Module<Tensor, Tensor> fc1;
    private readonly nn.Module<Tensor, Tensor> fc2;
    private readonly Scalar modulusScalar;
    private readonly Scalar angleScale;

    /// <summary>
    /// The Scalar 1 the model's additions pass as alpha, held for the process. TorchSharp's implicit conversions make a new
    /// Scalar per call that nothing references during the native call; a long in-process run hit libtorch's "toFloat"
    /// assertion there, and a Scalar freed mid-call is the suspected cause (not confirmed). Every Scalar here is a field.
    /// </summary>
    private static readonly Scalar One = 1.ToScalar();

    /// <summary>Creates the model, initialised from torch's generator (seed it with <c>torch.manual_seed</c> first).</summary>
    /// <param name="config">The shape.</param>
    /// <param name="modulus">M, the value range the Fourier features wrap at.</param>
    /// <param name="seed">Draws the frequencies.</param>
    public MatchModel(MatchModelConfig config, int modulus, long seed)
        : base(nameof(MatchModel))
    {
        config.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(modulus, 2);
        Config = config;
        Modulus = modulus;
        Frequencies = DrawFrequencies(modulus, config.Frequencies, seed);
        modulusScalar = ((long)modulus).ToScalar();
        angleScale = ((float)(2 * Math.PI / modulus)).ToScalar();
        frequencies = tensor(Frequencies.Select(f => (long)f).ToArray(), ScalarType.Int64);
        layers = nn.ModuleList([.. Enumerable.Range(0, config.Layers).Select(_ => new Layer(config))]);
        norm = nn.LayerNorm(config.Width);
        fc1 = nn.Linear(config.Width, config.Hidden);
        fc2 = nn.Linear(config.Hidden, 1);
        register_buffer("frequencies", frequencies);
        register_module("layers", layers);
        register_module("norm", norm);
        register_module("fc1", fc1);
        register_module("fc2", fc2);
    }

    /// <summary>The model's shape.</summary>
    public MatchModelConfig Config { get; }

    /// <summary>M.</summary>
    public int Modulus { get; }

    /// <summary>The Fourier frequencies (distinct, in <c>1..(M-1)/2</c>; all of them when F is at least that many).</summary>
    public IReadOnlyList<int> Frequencies { get; }

    /// <summary>One logit per position (positive means "has a match").</summary>
    /// <param name="input">Values <c>[batch, N]</c>, int64 in <c>[0, M)</c>.</param>
    /// <returns><c>[batch, N]</c>.</returns>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        // (f x mod M) in integers, so the angle keeps full precision for any M.
        var angle = (input.unsqueeze(-1) * frequencies).remainder(modulusScalar).to_type(ScalarType.Float32).mul(angleScale);
        var h = cat([angle.cos(), angle.sin()], -1);
        if (Frequencies.Count < Config.Frequencies)
        {
            // A small modulus has fewer frequencies than asked: pad to the stated width.
            h = nn.functional.pad(h, [0, 2 * (Config.Frequencies - Frequencies.Count)]);
        }
        Tensor? matches = null;
        foreach (var layer in layers)
        {
            (h, var match) = layer.Run(h);
            matches = matches is null ? match : matches.add(match, One);
        }

        var logits = fc2.forward(nn.functional.gelu(fc1.forward(norm.forward(h)))).squeeze(-1).add(matches!, One);
        GC.KeepAlive(this);
        return logits.MoveToOuterDisposeScope();
    }

    private static int[] DrawFrequencies(int modulus, int count, long seed)
    {
        int available = Math.Max(1, (modulus - 1) / 2);
        var all = Enumerable.Range(1, available).ToArray();
        var random = new SplitMix(unchecked((ulong)seed * 0xA24BAED4963EE407UL + 0x9FB21C651E98DF25UL));
        int take = Math.Min(count, available);
        for (int i = 0; i < take; i++)
        {
            int j = i + random.Below(available - i);
            (all[i], all[j]) = (all[j], all[i]);
        }

        return [.. all.Take(take).Order()];
    }

    /// <summary>One attention layer: <c>h + out(attn(h))</c> and its heads' weighted log-sum-exps.</summary>
    private sealed class Layer : nn.Module<Tensor, Tensor>
    {
        private static readonly Scalar NegativeInfinity = float.NegativeInfinity.ToScalar();
        private readonly Scalar softmaxScale;
        private readonly MatchModelConfig config;
        private readonly nn.Module<Tensor, Tensor> proj;
        private readonly nn.Module<Tensor, Tensor> output;
        private readonly global::TorchSharp.Modules.Parameter matchWeight;

        public Layer(MatchModelConfig config)
            : base(nameof(Layer))
        {
            this.config = config;
            softmaxScale = (config.Scale ?? (1 / Math.Sqrt(config.HeadDim))).ToScalar();
            proj = nn.Linear(config.Width, config.Projections * config.Heads * config.HeadDim, hasBias: false);
            output = nn.Linear(config.Heads * config.HeadDim, config.Width, hasBias: false);
            // Starts at 1 / (heads x layers): "a stronger match means more likely positive" from the first step, for every model alike.
            matchWeight = new global::TorchSharp.Modules.Parameter(full(config.Heads, 1.0f / (config.Heads * config.Layers)));
            register_module("proj", proj);
            register_module("out", output);
            register_parameter("match", matchWeight);
        }

        public override Tensor forward(Tensor input) => Run(input).Stream;

        public (Tensor Stream, Tensor Match) Run(Tensor input)
        {
            using var scope = NewDisposeScope();
            long batch = input.size(0), n = input.size(1);
            // [batch, n, projections, heads, d] -> [projections, batch, heads, n, d]
            var parts = proj.forward(input).view(batch, n, config.Projections, config.Heads, config.HeadDim).permute(2, 0, 3, 1, 4);
            bool causal = config.Causal || config.Window is not null;
            var (attended, logSumExp) = config.Attention == MatchAttention.Tensor
                ? FastAttentionFunctions.TensorAttentionWithLogSumExp(parts[0], parts[1], parts[2], parts[3], parts[4], causal, config.Window, config.Scale)
                : Softmax(parts[0], parts[1], parts[2], causal);
            var merged = attended.transpose(1, 2).reshape(batch, n, config.Heads * config.HeadDim);
            // The log-mean-exp: minus the log of the keys (pairs) each query sees, so the read-out does not shift with the length.
            var match = logSumExp.sub(LogVisible(n)).mul(matchWeight.view(1, -1, 1)).sum(1); // [batch, n]
            return (input.add(output.forward(merged), One).MoveToOuterDisposeScope(), match.MoveToOuterDisposeScope());
        }

        /// <summary><c>ln</c> of the keys (tensor: key pairs) query i sees, <c>[n]</c>: all n, the prefix i + 1, or the windows' part of it.</summary>
        private Tensor LogVisible(long n)
        {
            var counts = new float[n];
            for (long i = 0; i < n; i++)
            {
                long seen = config.Causal || config.Window is not null ? i + 1 : n;
                double visible = config.Attention == MatchAttention.Softmax ? seen
                    : config.Window is { } w ? (double)Math.Min(seen, w.First) * Math.Min(seen, w.Second) : (double)seen * seen;
                counts[i] = (float)Math.Log(visible);
            }

            return tensor(counts);
        }

        /// <summary>Softmax attention and its log-sum-exp on libtorch's operations, <c>[batch, heads, n, d]</c>.</summary>
        private (Tensor Output, Tensor LogSumExp) Softmax(Tensor q, Tensor k, Tensor v, bool causal)
        {
            var scores = matmul(q, k.transpose(-2, -1)).mul(softmaxScale);
            if (causal)
            {
                long n = q.size(-2);
                scores = scores.masked_fill(ones(n, n, ScalarType.Bool).triu(1), NegativeInfinity);
            }

            var logSumExp = scores.logsumexp(-1, keepdim: true);
            return (matmul(scores.sub(logSumExp).exp(), v), logSumExp.squeeze(-1));
        }
    }
}
