using FastAttention.Leverage;

namespace FastAttention;

/// <summary>Options for <see cref="LevAttention"/> and <see cref="LevKvCache"/>.</summary>
public readonly record struct LevAttentionOptions
{
    /// <summary>Keep the universal set <c>{j : sigma_j &gt;= eps}</c>; exactly one of <see cref="Eps"/> and <see cref="Top"/> must be set.</summary>
    public double? Eps { get; init; }

    /// <summary>Keep the k keys with the largest scores (the paper's ViT experiments use k = 32).</summary>
    public int? Top { get; init; }

    /// <summary>0 (default): softmax over the kept keys, selected by leverage scores (a heuristic for softmax: it has no
    /// n-independent universal set). p in (0, 4): power attention <c>|s q.k|^p</c>, selected by the p-sensitivity bounds,
    /// where the universal set is guaranteed.</summary>
    public double Power { get; init; }

    /// <summary>Score scale; <see langword="null"/> means <c>1/sqrt(d)</c>.</summary>
    public float? Scale { get; init; }

    /// <summary>Always keep the first this many keys (attention sinks).</summary>
    public int KeepFirst { get; init; }

    /// <summary>Always keep the last this many keys (a local window for decoding).</summary>
    public int KeepLast { get; init; }

    /// <summary>Worker threads; 0 means one per core.</summary>
    public int MaxDegreeOfParallelism { get; init; }
}

/// <summary>The keys one (batch, kv head) kept.</summary>
/// <param name="Batch">b.</param>
/// <param name="KvHead">The key/value head.</param>
/// <param name="Keys">Kept key indices, sorted.</param>
/// <param name="Certificate">The universal-set certificate (threshold mode), else null.</param>
public sealed record LevSelection(int Batch, int KvHead, int[] Keys, UniversalSetCertificate? Certificate);

/// <summary>
/// LevAttention (Kannan, Bhattacharyya, Kacham, Woodruff; docs/algorithms.md §4): per (batch, kv head), select keys by
/// leverage scores (or p-sensitivity bounds) — the universal set at eps, or the top k — plus optional always-kept
/// first/last keys, then ordinary softmax (or power) attention over the kept keys only. With power attention and a
/// threshold, every entry of at least eps is kept for every query (the certificate); with softmax the selection is the
/// paper's heuristic.
/// </summary>
public static partial class LevAttention
{
    /// <summary>Computes LevAttention into <paramref name="destination"/>; layouts as in <see cref="ExactAttention"/> (no causal mask).</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="options">Eps or top, power, scale, always-kept keys.</param>
    /// <returns>The kept keys per (batch, kv head).</returns>
    /// <exception cref="ArgumentException">Invalid shapes, both or neither of eps and top, or a bad eps, top or power.</exception>
    public static IReadOnlyList<LevSelection> Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, LevAttentionOptions options) =>
        Run(query, key, value, shape, destination, default, false, options);

    /// <summary>
    /// Computes LevAttention into <paramref name="destination"/> and each row's log-sum-exp over the kept keys into
    /// <paramref name="logSumExp"/>: what <see cref="Backward"/> needs, with the returned selections. Softmax (power 0):
    /// <c>lse_i = ln sum_{j in U} e^(s q_i.k_j)</c>, as <see cref="ExactAttention"/> returns it; power p &gt; 0:
    /// <c>ln Z_i</c>, <c>Z_i = sum_{j in U} |s q_i.k_j|^p</c>, as <see cref="PowerAttention"/> returns it. A row whose head kept
    /// no key (a threshold no key reaches) outputs zeros with log-sum-exp -infinity. The selection is a discrete choice:
    /// it is not differentiable, and the backward holds it fixed.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="logSumExp">Log-sum-exp per row, <c>[batch, heads, nq]</c>; must not overlap the inputs or the destination.</param>
    /// <param name="options">Eps or top, power, scale, always-kept keys.</param>
    /// <returns>The kept keys per (batch, kv head), in (batch, kv head) order.</returns>
    /// <exception cref="ArgumentException">As for the overload without <paramref name="logSumExp"/>, or its length is not <c>batch heads nq</c>.</exception>
    public static IReadOnlyList<LevSelection> Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, Span<float> logSumExp, LevAttentionOptions options) =>
        Run(query, key, value, shape, destination, logSumExp, true, options);

    private static List<LevSelection> Run(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, Span<float> logSumExp, bool withLogSumExp, LevAttentionOptions options)
    {
        Validate.Attention(query, key, value, shape, destination);
        if (withLogSumExp)
        {
            LogSumExp.Check(logSumExp, query, key, value, destination, shape);
        }

        CheckOptions(options);

        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount, nq = shape.QueryCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        var selections = new List<LevSelection>();
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < kvHeads; hk++)
            {
                long kv = ((long)b * kvHeads) + hk;
                ReadOnlySpan<float> k = key.Slice((int)(kv * nk * d), nk * d);
                ReadOnlySpan<float> v = value.Slice((int)(kv * nk * dv), nk * dv);
                (int[] kept, UniversalSetCertificate? certificate) = Select(k, d, options);
                selections.Add(new LevSelection(b, hk, kept, certificate));

                float[] ks = Gather(k, kept, d), vs = Gather(v, kept, dv);
                long firstHead = ((long)b * shape.HeadCount) + (hk * group);
                var sub = new AttentionShape(1, group, nq, kept.Length, d, dv, KeyValueHeadCount: 1);
                ReadOnlySpan<float> q = query.Slice((int)(firstHead * nq * d), group * nq * d);
                Span<float> o = destination.Slice((int)(firstHead * nq * dv), group * nq * dv);
                Span<float> lse = withLogSumExp ? logSumExp.Slice((int)(firstHead * nq), group * nq) : default;
                Attend(q, ks, vs, sub, o, lse, options);
            }
        }

        return selections;
    }

    /// <summary>The keys one head keeps: threshold or top k by its scores, plus the always-kept ones, sorted.</summary>
    internal static (int[] Keys, UniversalSetCertificate? Certificate) Select(ReadOnlySpan<float> keys, int d, LevAttentionOptions options)
    {
        int n = keys.Length / d;
        double p = options.Power > 0 ? options.Power : 2;
        (double[] bounds, int rank) = UniversalSet.SensitivityBounds(keys, d, p, options.MaxDegreeOfParallelism);
        int[] chosen;
        UniversalSetCertificate? certificate = null;
        if (options.Eps is double eps)
        {
            (chosen, certificate) = UniversalSet.FromBounds(bounds, rank, eps, p);
        }
        else
        {
            chosen = UniversalSet.Top(bounds, Math.Min(options.Top!.Value, n));
        }

        return (WithAlwaysKept(chosen, n, options), certificate);
    }

    internal static int[] WithAlwaysKept(IEnumerable<int> chosen, int n, LevAttentionOptions options) =>
        [.. chosen.Concat(Enumerable.Range(0, Math.Min(options.KeepFirst, n))).Concat(Enumerable.Range(Math.Max(0, n - options.KeepLast), Math.Min(options.KeepLast, n))).Distinct().Order()];

    /// <summary>Softmax or power attention of the queries over the kept keys (with each row's log-sum-exp unless <paramref name="logSumExp"/> is empty).</summary>
    internal static void Attend(ReadOnlySpan<float> q, float[] keys, float[] values, AttentionShape shape, Span<float> output, Span<float> logSumExp, LevAttentionOptions options)
    {
        if (shape.KeyCount == 0)
        {
            output.Clear();
            logSumExp.Fill(float.NegativeInfinity);
            return;
        }

        bool withLogSumExp = !logSumExp.IsEmpty;
        if (options.Power > 0)
        {
            PowerAttentionOptions power = PowerOptions(options);
            _ = withLogSumExp ? PowerAttention.Compute(q, keys, values, shape, output, logSumExp, power) : PowerAttention.Compute(q, keys, values, shape, output, power);
        }
        else
        {
            ExactAttentionOptions exact = ExactOptions(options);
            _ = withLogSumExp ? ExactAttention.Compute(q, keys, values, shape, output, logSumExp, exact) : ExactAttention.Compute(q, keys, values, shape, output, exact);
        }
    }

    /// <summary>The power attention LevAttention runs over the kept keys (scale 1 unless set).</summary>
    private static PowerAttentionOptions PowerOptions(LevAttentionOptions options) =>
        new() { Power = (float)options.Power, Scale = options.Scale ?? 1f, MaxDegreeOfParallelism = options.MaxDegreeOfParallelism };

    /// <summary>The softmax attention LevAttention runs over the kept keys (scale 1/sqrt(d) unless set).</summary>
    private static ExactAttentionOptions ExactOptions(LevAttentionOptions options) =>
        new() { Scale = options.Scale, MaxDegreeOfParallelism = options.MaxDegreeOfParallelism };

    internal static float[] Gather(ReadOnlySpan<float> rows, int[] indices, int width)
    {
        float[] gathered = new float[indices.Length * width];
        for (int x = 0; x < indices.Length; x++)
        {
            rows.Slice(indices[x] * width, width).CopyTo(gathered.AsSpan(x * width, width));
        }

        return gathered;
    }

    internal static void CheckOptions(LevAttentionOptions options)
    {
        if (options.Eps.HasValue == options.Top.HasValue)
        {
            throw new ArgumentException("Set exactly one of Eps (universal set) and Top (top-k keys).", nameof(options));
        }

        if (options.Eps is double eps)
        {
            UniversalSet.CheckEps(eps);
        }

        if (options.Top is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Top, "Top must be at least 1.");
        }

        if (options.Power != 0)
        {
            LewisWeights.CheckP(options.Power);
        }

        if (options.KeepFirst < 0 || options.KeepLast < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "KeepFirst and KeepLast cannot be negative.");
        }
    }
}

/// <summary>
/// A leverage-score KV-cache policy for decoding (docs/algorithms.md §4, "related practice"): keys arrive one at a time
/// (<see cref="Append"/>); a <see cref="LeverageStream"/> keeps the running Gram state and only the candidate keys whose
/// online leverage score reached the threshold (online scores only fall, so an evicted key could never re-enter the
/// universal set). <see cref="Attend"/> rescores the candidates against the current Gram matrix — O(|candidates| d^2),
/// never from scratch — and attends over the current selection plus the always-kept first and last keys. In top-k
/// mode the candidates are those with online score at least the k-th largest seen so far (a heuristic).
/// </summary>
public sealed class LevKvCache
{
    private readonly LevAttentionOptions _options;
    private readonly int _valueDim;
    private readonly List<(long Index, float[] Key, float[] Value, double Online)> _candidates = [];
    private readonly List<(float[] Key, float[] Value)> _first = [];
    private readonly Queue<(long Index, float[] Key, float[] Value)> _last = new();
    private readonly LeverageStream _stream;

    /// <summary>An empty cache for d-dimensional keys and dv-dimensional values (softmax only; power attention uses <see cref="LevAttention"/>).</summary>
    /// <param name="dimension">d.</param>
    /// <param name="valueDimension">dv.</param>
    /// <param name="options">Eps or top, scale, always-kept keys.</param>
    public LevKvCache(int dimension, int valueDimension, LevAttentionOptions options)
    {
        Validate.Positive(dimension, "the key dimension d", $"d {dimension}, dv {valueDimension}", nameof(dimension));
        Validate.Positive(valueDimension, "the value dimension dv", $"d {dimension}, dv {valueDimension}", nameof(valueDimension));
        LevAttention.CheckOptions(options);
        _options = options;
        _valueDim = valueDimension;
        _stream = new LeverageStream(dimension, options.Eps ?? 1.0);
    }

    /// <summary>Keys appended so far.</summary>
    public long Count => _stream.Count;

    /// <summary>The cache's sizes as the messages show them.</summary>
    private string Dimensions => $"d {_stream.Gram.Dimension}, dv {_valueDim}";

    /// <summary>Candidates held (the cache's size beyond the always-kept keys).</summary>
    public int CandidateCount => _candidates.Count;

    /// <summary>The stream positions of the candidates held, in the order they joined (for tests).</summary>
    internal long[] CandidateIndices => [.. _candidates.Select(c => c.Index)];

    /// <summary>Appends one key and its value.</summary>
    /// <param name="key">k, length d.</param>
    /// <param name="value">v, length dv.</param>
    public void Append(ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        Validate.Length(key.Length, _stream.Gram.Dimension, nameof(key), "[d]", Dimensions);
        Validate.Length(value.Length, _valueDim, nameof(value), "[dv]", Dimensions);

        long index = _stream.Count;
        _stream.Append(key);
        double online = _stream.LastOnlineScores.Count > 0 ? _stream.LastOnlineScores[0] : 0;
        if (index < _options.KeepFirst)
        {
            _first.Add((key.ToArray(), value.ToArray()));
        }

        if (_options.KeepLast > 0)
        {
            _last.Enqueue((index, key.ToArray(), value.ToArray()));
            if (_last.Count > _options.KeepLast)
            {
                _last.Dequeue();
            }
        }

        bool keep = _options.Eps is double eps
            ? online >= eps * (1 - 1e-6)
            : _candidates.Count < 4 * _options.Top!.Value || online >= _candidates.Min(c => c.Online);
        if (keep)
        {
            _candidates.Add((index, key.ToArray(), value.ToArray(), online));
            if (_options.Top is int top && _candidates.Count > 4 * top)
            {
                // Top-k mode keeps a pool of 4k candidates: drop the one with the smallest online score.
                int worst = 0;
                for (int x = 1; x < _candidates.Count; x++)
                {
                    worst = _candidates[x].Online < _candidates[worst].Online ? x : worst;
                }

                _candidates.RemoveAt(worst);
            }
        }
    }

    /// <summary>The stream positions of the keys the next <see cref="Attend"/> uses, sorted.</summary>
    public long[] Selected => [.. Selection().Select(x => x.Index)];

    /// <summary>Softmax attention of one query over the selection.</summary>
    /// <param name="query">q, length d.</param>
    /// <param name="output">Output, length dv.</param>
    public void Attend(ReadOnlySpan<float> query, Span<float> output)
    {
        Validate.Length(query.Length, _stream.Gram.Dimension, nameof(query), "[d]", Dimensions);
        Validate.Length(output.Length, _valueDim, nameof(output), "[dv]", Dimensions);
        Validate.NoOverlap(output, query, nameof(query), nameof(output));
        var kept = Selection();
        int d = _stream.Gram.Dimension;
        float[] keys = new float[kept.Count * d], values = new float[kept.Count * _valueDim];
        for (int x = 0; x < kept.Count; x++)
        {
            kept[x].Key.CopyTo(keys, x * d);
            kept[x].Value.CopyTo(values, x * _valueDim);
        }

        LevAttention.Attend(query, keys, values, new AttentionShape(1, 1, 1, kept.Count, d, _valueDim), output, default, _options with { Power = 0 });
    }

    private List<(long Index, float[] Key, float[] Value)> Selection()
    {
        GramFactor factor = _stream.Gram.Factor();
        var scored = _candidates.Select(c => (c.Index, c.Key, c.Value, Score: Math.Clamp(factor.Score(c.Key), 0, 1))).ToList();
        IEnumerable<(long Index, float[] Key, float[] Value, double Score)> chosen = _options.Eps is double eps
            ? scored.Where(c => c.Score >= eps * (1 - 1e-9))
            : scored.OrderByDescending(c => c.Score).ThenBy(c => c.Index).Take(_options.Top!.Value);
        var all = chosen.Select(c => (c.Index, c.Key, c.Value)).ToList();
        for (int x = 0; x < _first.Count; x++)
        {
            all.Add((x, _first[x].Key, _first[x].Value));
        }

        all.AddRange(_last);
        return [.. all.DistinctBy(c => c.Index).OrderBy(c => c.Index)];
    }
}
