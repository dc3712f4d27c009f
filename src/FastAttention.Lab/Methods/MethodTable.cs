namespace FastAttention.Lab;

/// <summary>
/// The one table of attention methods that <c>attend</c>, <c>tensor</c>, <c>bench</c>, the demo and the report read:
/// per method its name, summary, accepted options, forward, flop counts and backward (instead of a list in each command).
/// </summary>
public static partial class MethodTable
{
    /// <summary>Every method, in the order help lists them.</summary>
    public static IReadOnlyList<MethodEntry> All { get; } =
    [
        new("exact", "exact softmax attention on the fastest kernel for the CPU and shape (4 n^2 d flops)",
            ["scale", "causal", "kernel", "allow-nonfinite"], Exact, ExactFlops, null, IsTensor: false) { Backward = Training(ExactTraining, ExactGradients, ExactFlops) },
        new("poly", "the polynomial method (Alman-Song) with an error certificate; own flops: its feature maps and thin products",
            ["scale", "causal", "eps", "degree"], Polynomial, PolynomialFlops, ExactFlops, IsTensor: false)
            { Check = RelativeError, Backward = Training(PolynomialTraining, PolynomialGradients, PolynomialFlops) },
        new("sketch", "sketched degree-4 polynomial attention (PolySketchFormer), statistical error; own flops: the sketch's",
            ["scale", "causal", "sketch", "seed"], Sketch, SketchFlops, ExactFlops, IsTensor: false)
            { Backward = Training(SketchTraining, SketchGradients, SketchFlops) },
        new("lev", "LevAttention: each head's keys selected by leverage score (--top N, or --eps E for the universal set), then softmax over the kept keys",
            ["scale", "eps", "top", "keep-first", "keep-last"], Lev, LevFlops, ExactFlops, IsTensor: false)
            { Check = LevSelection, Backward = Training(LevTraining, LevGradients, LevFlops) },
        new("power", "power attention |s q.k|^p normalised per row (LevAttention's guaranteed case), on the exact kernels",
            ["scale", "causal", "kernel", "power"], Power, ExactFlops, null, IsTensor: false) { Backward = Training(PowerTraining, PowerGradients, ExactFlops) },
        new("tensor", "exact tensor (2-simplicial) attention over key pairs, n^3 work: 2 (d + dv) flops per (query, key, key) triple",
            ["scale", "causal", "window"], Tensor, TensorFlops, null, IsTensor: true)
            { Backward = Training(TensorTraining, TensorGradients, TensorFlops) },
        new("tensor-poly", "tensor attention by the polynomial method with an error certificate, near-linear for bounded entries",
            ["scale", "causal", "eps", "degree"], TensorPolynomial, PolynomialFlops, TensorFlops, IsTensor: true) { Check = RelativeError },
    ];

    /// <summary>Every method's name, in table order.</summary>
    public static IReadOnlyList<string> Names { get; } = [.. All.Select(m => m.Name)];

    /// <summary>The method called <paramref name="name"/>.</summary>
    /// <param name="name">A method name (<see cref="Names"/>).</param>
    /// <returns>Its entry.</returns>
    /// <exception cref="ArgumentException">No method has that name; the message lists them.</exception>
    public static MethodEntry Find(string name) => TryFind(name)
        ?? throw new ArgumentException($"unknown method '{name}' (available: {string.Join(", ", Names)})", nameof(name));

    /// <summary>The method called <paramref name="name"/>, or null.</summary>
    /// <param name="name">A method name.</param>
    /// <returns>Its entry, or null when there is none.</returns>
    public static MethodEntry? TryFind(string name) => All.FirstOrDefault(m => m.Name == name);

    /// <summary>The methods that accept <paramref name="option"/>, in table order (for "applies to --method ..." messages).</summary>
    /// <param name="option">A CLI option name without dashes.</param>
    /// <returns>Their names.</returns>
    public static IReadOnlyList<string> Accepting(string option) => [.. All.Where(m => m.Accepts(option)).Select(m => m.Name)];

    /// <summary>The tensor-attention shape of an attention shape: one head per (batch, head), order 3.</summary>
    /// <param name="shape">The shape, with one key/value head per query head.</param>
    /// <returns>The tensor shape.</returns>
    /// <exception cref="ArgumentException">Grouped-query heads (tensor attention takes one key/value head per query head).</exception>
    public static TensorAttentionShape TensorShape(AttentionShape shape)
    {
        if (shape.EffectiveKeyValueHeads != shape.HeadCount)
        {
            throw new ArgumentException("tensor attention takes one key/value head per query head (no grouped-query heads)", nameof(shape));
        }

        return new TensorAttentionShape(shape.BatchSize * shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim);
    }

    /// <summary>The polynomial methods: <c>--eps</c> is the polynomial's relative error on [-R, R], below 1.</summary>
    private static string? RelativeError(MethodSettings s) =>
        s.Eps is double eps && !(eps > 0 && eps < 1) ? $"--eps is the polynomial's relative error and must lie in (0, 1); got {eps}" : null;

    /// <summary>lev keeps either each head's universal set (<c>--eps</c>, an attention weight in (0, 1]) or its top keys (<c>--top</c>).</summary>
    private static string? LevSelection(MethodSettings s) =>
        s.Eps is double eps && !(eps > 0 && eps <= 1) ? $"--eps for lev is an attention weight and must lie in (0, 1]; got {eps}"
        : s.Eps.HasValue == s.Top.HasValue ? "lev needs exactly one of --eps E (universal set) and --top N"
        : null;

    private static MethodRun Exact(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s)
    {
        AttentionRun run = ExactAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, ExactOptions(s));
        return new MethodRun(run.Kernel);
    }

    /// <summary>The exact method's library options from the settings (the one mapping the table, the benchmarks and the CLI use).</summary>
    /// <param name="s">The settings.</param>
    /// <returns>The options.</returns>
    public static ExactAttentionOptions ExactOptions(MethodSettings s) => new()
    {
        Scale = s.Scale,
        Causal = s.Causal,
        Kernel = s.Kernel,
        MaxDegreeOfParallelism = s.Threads,
        AllowNonFinite = s.AllowNonFinite,
    };

    private static PolynomialAttentionOptions PolynomialOptions(MethodSettings s) => new()
    {
        Scale = s.Scale,
        Causal = s.Causal,
        RelativeError = s.Eps,
        Degree = s.Degree,
        MaxDegreeOfParallelism = s.Threads,
    };

    private static MethodRun Polynomial(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s) =>
        new("polynomial-double", PolynomialAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, PolynomialOptions(s)));

    private static MethodRun Sketch(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s) =>
        new("sketch-double", Sketch: SketchedAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, SketchOptions(s)));

    private static SketchedAttentionOptions SketchOptions(MethodSettings s) => new()
    {
        Scale = s.Scale,
        Causal = s.Causal,
        SketchSize = s.SketchSize,
        Seed = s.Seed,
        MaxDegreeOfParallelism = s.Threads,
    };

    private static MethodRun Lev(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s)
    {
        IReadOnlyList<LevSelection> selections = LevAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, LevOptions(s));
        return new MethodRun("lev-softmax", Selections: selections);
    }

    /// <summary>lev has no causal mask: it selects keys for every query at once.</summary>
    private static LevAttentionOptions LevOptions(MethodSettings s) => s.Causal
        ? throw new ArgumentException("lev selects keys for every query at once and has no causal mask (decoding uses LevKvCache)", nameof(s))
        : new()
        {
            Eps = s.Eps,
            Top = s.Top,
            Scale = s.Scale,
            KeepFirst = s.KeepFirst,
            KeepLast = s.KeepLast,
            MaxDegreeOfParallelism = s.Threads,
        };

    private static MethodRun Power(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s)
    {
        AttentionRun run = PowerAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, PowerOptions(s));
        return new MethodRun(run.Kernel);
    }

    private static PowerAttentionOptions PowerOptions(MethodSettings s) => new()
    {
        Power = s.Power,
        Scale = s.Scale,
        Causal = s.Causal,
        Kernel = s.Kernel,
        MaxDegreeOfParallelism = s.Threads,
    };

    private static MethodRun Tensor(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s)
    {
        AttentionRun run = TensorAttention.Compute(x.Query.Span, x.Keys, x.Values, TensorShape(shape), output, TensorOptions(s));
        return new MethodRun(run.Kernel);
    }

    /// <summary>Windows imply the causal limit (a window ends at the query).</summary>
    private static TensorAttentionOptions TensorOptions(MethodSettings s) => new()
    {
        Scale = s.Scale,
        Causal = s.Causal || s.Windows is not null,
        Windows = s.Windows,
        MaxDegreeOfParallelism = s.Threads,
    };

    private static MethodRun TensorPolynomial(MethodInputs x, AttentionShape shape, Span<float> output, MethodSettings s) =>
        new("tensor-polynomial-double", TensorAttention.ComputePolynomial(x.Query.Span, x.Keys, x.Values, TensorShape(shape), output, PolynomialOptions(s)));

    private static double ExactFlops(AttentionShape shape, MethodSettings s, MethodRun? run) =>
        FlopCount.ExactAttention(shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, s.Causal);

    /// <summary>The library's count for the run (feature maps and the two thin products); with a forced degree, before any run.</summary>
    private static double PolynomialFlops(AttentionShape shape, MethodSettings s, MethodRun? run) =>
        run?.Certificate?.PredictedFlops
        ?? (s.Degree is int g ? PolynomialAttention.PredictedFlops(shape, PolynomialAttention.FeatureCount(shape.HeadDim, g))
            : throw new InvalidOperationException("the polynomial degree follows the data: give the run's certificate or a forced degree"));

    private static double SketchFlops(AttentionShape shape, MethodSettings s, MethodRun? run) =>
        run?.Sketch?.PredictedFlops ?? throw new InvalidOperationException("the sketch's flop count is the library's report of the run: give the run");

    /// <summary>
    /// Per (batch, kv head): the selection, 2 nk d^2 (the Gram matrix K^T K) + d^3 / 3 (its Cholesky factor) + nk d^2
    /// (one triangular solve per key for its score), then exact attention of the group's queries over the kept keys.
    /// </summary>
    private static double LevFlops(AttentionShape shape, MethodSettings s, MethodRun? run)
    {
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        double d = shape.HeadDim, nk = shape.KeyCount;
        double selection = (3 * nk * d * d) + (d * d * d / 3);
        IEnumerable<double> kept = run?.Selections is { } selections
            ? selections.Select(x => (double)x.Keys.Length)
            : s.Top is int top
                ? Enumerable.Repeat((double)Math.Min(nk, (double)top + s.KeepFirst + s.KeepLast), shape.BatchSize * kvHeads)
                : throw new InvalidOperationException("lev with --eps keeps a data-dependent number of keys: give the run");
        return kept.Sum(k => selection + (2.0 * group * shape.QueryCount * k * (shape.HeadDim + shape.ValueDim)));
    }

    /// <summary>2 (d + dv) flops per visible (query, key1, key2) triple, every head (with windows, j1 among the last W1 visible keys, j2 among the last W2).</summary>
    private static double TensorFlops(AttentionShape shape, MethodSettings s, MethodRun? run)
    {
        bool causal = s.Causal || s.Windows is not null;
        double triples = 0;
        for (long i = 0; i < shape.QueryCount; i++)
        {
            double visible = causal ? Math.Clamp(i + 1 + shape.KeyCount - shape.QueryCount, 0, shape.KeyCount) : shape.KeyCount;
            triples += s.Windows is [int w1, int w2, ..] ? Math.Min(w1, visible) * Math.Min(w2, visible) : visible * visible;
        }

        return 2.0 * (shape.HeadDim + shape.ValueDim) * shape.BatchSize * shape.HeadCount * triples;
    }
}
