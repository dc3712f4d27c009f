namespace FastAttention.Lab;

/// <summary>
/// The settings every method reads what it needs from (the CLI's options, by name): one record for all methods, so a
/// command parses its options once and hands them to whichever method was chosen. Each method reads only the settings
/// its <see cref="MethodEntry.Options"/> name.
/// </summary>
public sealed record MethodSettings
{
    /// <summary>Score scale (<c>--scale</c>); null: the method's default (1/sqrt(d), 1/d for tensor attention).</summary>
    public float? Scale { get; init; }

    /// <summary>Causal mask (<c>--causal</c>), bottom-right aligned when nq != nk.</summary>
    public bool Causal { get; init; }

    /// <summary>Force an exact kernel by name (<c>--kernel</c>, one of <see cref="AttentionKernels.Names"/>).</summary>
    public string? Kernel { get; init; }

    /// <summary>Worker threads (<c>--threads</c>); 0: all cores.</summary>
    public int Threads { get; init; }

    /// <summary>
    /// <c>--eps</c>: for poly and tensor-poly the target relative error of the polynomial (null: 1e-3); for lev the
    /// leverage-score threshold of the universal set (exactly one of it and <see cref="Top"/>).
    /// </summary>
    public double? Eps { get; init; }

    /// <summary>Force the polynomial degree (<c>--degree</c>, poly and tensor-poly).</summary>
    public int? Degree { get; init; }

    /// <summary>Sketch size m (<c>--sketch</c>); 0: <see cref="SketchedAttention.DefaultSketchSize"/>.</summary>
    public int SketchSize { get; init; }

    /// <summary>Seed of the Gaussian sketch (<c>--seed</c> with sketch).</summary>
    public long Seed { get; init; }

    /// <summary>lev: keep each head's <c>Top</c> keys with the largest leverage scores (<c>--top</c>).</summary>
    public int? Top { get; init; }

    /// <summary>lev: always keep the first keys (<c>--keep-first</c>).</summary>
    public int KeepFirst { get; init; }

    /// <summary>lev: always keep the last keys (<c>--keep-last</c>).</summary>
    public int KeepLast { get; init; }

    /// <summary>power: the exponent p of |s q.k|^p (<c>--power</c>; null: 2).</summary>
    public float? Power { get; init; }

    /// <summary>tensor: sliding windows (W1, W2): key j1 among the last W1 positions a query sees, j2 among the last W2 (<c>--window</c>; implies causal).</summary>
    public IReadOnlyList<int>? Windows { get; init; }

    /// <summary>exact: let NaN/Inf in the inputs propagate instead of rejecting them (<c>--allow-nonfinite</c>).</summary>
    public bool AllowNonFinite { get; init; }
}

/// <summary>
/// A method's inputs: queries, and one key and value tensor (two for tensor attention: K1, K2 and V1, V2), laid out
/// as <see cref="ExactAttention"/> and <see cref="TensorAttention"/> document.
/// </summary>
/// <param name="Query">Queries, <c>[batch, heads, nq, d]</c>.</param>
/// <param name="Keys">Keys: one tensor, or two for tensor attention.</param>
/// <param name="Values">Values: one tensor, or two for tensor attention.</param>
public sealed record MethodInputs(ReadOnlyMemory<float> Query, IReadOnlyList<ReadOnlyMemory<float>> Keys, IReadOnlyList<ReadOnlyMemory<float>> Values)
{
    /// <summary>Inputs of ordinary attention: one key and one value tensor.</summary>
    /// <param name="query">Queries.</param>
    /// <param name="key">Keys.</param>
    /// <param name="value">Values.</param>
    /// <returns>The inputs.</returns>
    public static MethodInputs Of(ReadOnlyMemory<float> query, ReadOnlyMemory<float> key, ReadOnlyMemory<float> value) => new(query, [key], [value]);
}

/// <summary>What one forward run reports besides its output.</summary>
/// <param name="Kernel">The kernel or method label that ran (e.g. <c>tiled-v256</c>, <c>polynomial-double</c>).</param>
/// <param name="Certificate">poly and tensor-poly: the error certificate.</param>
/// <param name="Sketch">sketch: the sketch's size, rank, seed and predicted flops.</param>
/// <param name="Selections">lev: the kept keys per (batch, kv head).</param>
public sealed record MethodRun(string Kernel, PolynomialCertificate? Certificate = null, SketchReport? Sketch = null, IReadOnlyList<LevSelection>? Selections = null)
{
    /// <summary>lev: the mean number of keys kept per (batch, kv head); null for other methods.</summary>
    public double? MeanKeptKeys => Selections is { Count: > 0 } s ? s.Average(x => (double)x.Keys.Length) : null;
}

/// <summary>Computes a method into <paramref name="destination"/> (<c>[batch, heads, nq, dv]</c>).</summary>
/// <param name="inputs">Queries, keys, values.</param>
/// <param name="shape">The dimensions (tensor methods: one key/value head per query head).</param>
/// <param name="destination">The output.</param>
/// <param name="settings">The method's settings.</param>
/// <returns>The kernel label and what the method certifies or selected.</returns>
public delegate MethodRun MethodForward(MethodInputs inputs, AttentionShape shape, Span<float> destination, MethodSettings settings);

/// <summary>
/// A flop count for a shape and settings. Methods whose work depends on the data (the polynomial degree follows the
/// range of the scores; lev's kept keys with a threshold) or whose count the library reports after the run (sketch)
/// read it from the <paramref name="run"/> when given, and otherwise from the settings (<see cref="MethodSettings.Degree"/>,
/// <see cref="MethodSettings.Top"/>); without either they throw <see cref="InvalidOperationException"/>.
/// </summary>
/// <param name="shape">The dimensions.</param>
/// <param name="settings">The method's settings.</param>
/// <param name="run">A finished run's report, when there is one.</param>
/// <returns>Floating-point operations.</returns>
public delegate double MethodFlops(AttentionShape shape, MethodSettings settings, MethodRun? run);

/// <summary>
/// One attention method, as every command sees it: its name, a one-line summary for help, the options it accepts
/// (by CLI name), its forward, its flop count, what it rejects of the settings and, for the methods that have one, its
/// training forward and backward (<see cref="Backward"/>).
/// </summary>
/// <param name="Name">The name a command's <c>--method</c> takes.</param>
/// <param name="Summary">One line for help text.</param>
/// <param name="Options">The method-specific options it accepts, by CLI name (shape, thread and file options aside).</param>
/// <param name="Forward">Computes it.</param>
/// <param name="Flops">Its own flop count (what it actually computes).</param>
/// <param name="ExactEquivalentFlops">For approximate methods, the flops of the exact computation it stands in for (effective GFLOP/s); null for exact ones.</param>
/// <param name="IsTensor">Whether it takes two key and value tensors (order-3 tensor attention).</param>
public sealed record MethodEntry(string Name, string Summary, IReadOnlyList<string> Options, MethodForward Forward, MethodFlops Flops, MethodFlops? ExactEquivalentFlops, bool IsTensor)
{
    /// <summary>Whether the method approximates another computation (and so has <see cref="ExactEquivalentFlops"/>).</summary>
    public bool IsApproximate => ExactEquivalentFlops is not null;

    /// <summary>
    /// What the method says of settings it cannot take (e.g. an <c>--eps</c> out of its range, lev without exactly one of
    /// eps and top), checked before any input is touched; null when it takes any. Returns the reason, or null when fine.
    /// </summary>
    public Func<MethodSettings, string?>? Check { get; init; }

    /// <summary>The reason <paramref name="settings"/> cannot run this method, or null when they can (<see cref="Check"/>).</summary>
    /// <param name="settings">The settings.</param>
    /// <returns>The reason, or null.</returns>
    public string? WhyNot(MethodSettings settings) => Check?.Invoke(settings);

    /// <summary>
    /// The method's training forward and its backward, run together on the same inputs and settings (<see cref="MethodBackward"/>);
    /// null for a method without a backward yet.
    /// </summary>
    public MethodBackward? Backward { get; init; }

    /// <summary>Whether the method has a <see cref="Backward"/>.</summary>
    public bool HasBackward => Backward is not null;

    /// <summary>Whether the method accepts the option <paramref name="option"/> (a CLI name without dashes).</summary>
    /// <param name="option">The option's name.</param>
    /// <returns>True when it is one of <see cref="Options"/>.</returns>
    public bool Accepts(string option) => Options.Contains(option);
}
