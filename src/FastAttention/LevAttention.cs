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

    /// <summary>
    /// Checks options as <see cref="Compute(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, LevAttentionOptions)"/>
    /// does, with the same messages: for callers that select keys themselves (sharded keys) and must refuse bad options before any work.
    /// </summary>
    /// <param name="options">The options.</param>
    /// <exception cref="ArgumentException">Both or neither of eps and top, or a bad eps, top, power or always-kept count.</exception>
    public static void ValidateOptions(LevAttentionOptions options) => CheckOptions(options);

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
/// (<see cref="Append(ReadOnlySpan{float}, ReadOnlySpan{float})"/>); a <see cref="LeverageStream"/> keeps the running Gram
/// state and only the candidate keys whose online leverage score reached the threshold (online scores only fall, so an
/// evicted key could never re-enter the universal set). <see cref="Attend"/> rescores the candidates against the current
/// Gram matrix — O(|candidates| d^2), never from scratch — and attends over the current selection plus the always-kept
/// first and last keys. In top-k mode the candidates are those with online score at least the k-th largest seen so far
/// (a heuristic).
/// <para>
/// The kept keys and values live in a paged <see cref="KvCache"/> of one kv head, in any <see cref="KvElementType"/>: a
/// token takes a slot while it is a candidate or always kept, and an evicted token's slot goes to the token in the last
/// slot, so the held tokens always fill the first slots. Attend moves the selected tokens to the front and attends over
/// that prefix in place (softmax does not depend on the order of the keys), gathering nothing. Candidates are rescored on
/// their stored (widened) keys. Not thread-safe: Attend reorders slots.
/// </para>
/// </summary>
public sealed class LevKvCache : IDisposable
{
    private readonly LevAttentionOptions _options;
    private readonly int _valueDim;
    private readonly LeverageStream _stream;
    private readonly KvCache _store;

    /// <summary>What each slot of the store holds, in slot order.</summary>
    private readonly List<Held> _held = [];

    /// <summary>The slot of each held stream position.</summary>
    private readonly Dictionary<long, int> _slotOf = [];
    private int _candidateCount;

    /// <summary>An empty cache for d-dimensional keys and dv-dimensional values stored as float32 (softmax only; power attention uses <see cref="LevAttention"/>).</summary>
    /// <param name="dimension">d.</param>
    /// <param name="valueDimension">dv.</param>
    /// <param name="options">Eps or top, scale, always-kept keys.</param>
    public LevKvCache(int dimension, int valueDimension, LevAttentionOptions options)
        : this(dimension, valueDimension, options, KvElementType.Float32)
    {
    }

    /// <summary>An empty cache for d-dimensional keys and dv-dimensional values stored as <paramref name="elementType"/>.</summary>
    /// <param name="dimension">d.</param>
    /// <param name="valueDimension">dv.</param>
    /// <param name="options">Eps or top, scale, always-kept keys.</param>
    /// <param name="elementType">How the kept keys and values are stored.</param>
    public LevKvCache(int dimension, int valueDimension, LevAttentionOptions options, KvElementType elementType)
    {
        Validate.Positive(dimension, "the key dimension d", $"d {dimension}, dv {valueDimension}", nameof(dimension));
        Validate.Positive(valueDimension, "the value dimension dv", $"d {dimension}, dv {valueDimension}", nameof(valueDimension));
        LevAttention.CheckOptions(options);
        _options = options;
        _valueDim = valueDimension;
        _stream = new LeverageStream(dimension, options.Eps ?? 1.0);
        _store = new KvCache(1, dimension, valueDimension, new KvCacheOptions
        {
            ElementType = elementType,
            Scale = options.Scale,
            MaxDegreeOfParallelism = options.MaxDegreeOfParallelism,
        });
    }

    /// <summary>Keys appended so far.</summary>
    public long Count => _stream.Count;

    /// <summary>Candidates held (the cache's size beyond the always-kept keys).</summary>
    public int CandidateCount => _candidateCount;

    /// <summary>Tokens held: the candidates and the always-kept first and last keys, each once.</summary>
    public int HeldCount => _store.Count;

    /// <summary>Bytes the held tokens take in the storage type (see <see cref="KvCache.BytesUsed"/>).</summary>
    public long BytesUsed => _store.BytesUsed;

    /// <summary>Bytes allocated for them (see <see cref="KvCache.BytesReserved"/>); freed slots are reused, so this follows the most ever held.</summary>
    public long BytesReserved => _store.BytesReserved;

    /// <summary>The stream positions of the keys the next <see cref="Attend"/> uses, sorted.</summary>
    public long[] Selected => [.. Selection()];

    /// <summary>The stream positions of the candidates held, in the order they joined (for tests).</summary>
    internal long[] CandidateIndices => [.. _held.Where(h => h.Candidate).Select(h => h.Index).Order()];

    /// <summary>The cache's sizes as the messages show them.</summary>
    private string Dimensions => $"d {_stream.Gram.Dimension}, dv {_valueDim}";

    /// <summary>Appends one key and its value.</summary>
    /// <param name="key">k, length d; finite.</param>
    /// <param name="value">v, length dv; finite.</param>
    /// <exception cref="ArgumentException">A length does not match, or a value is not finite or lies outside the storage type's range.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void Append(ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        Validate.Length(key.Length, _stream.Gram.Dimension, nameof(key), "[d]", Dimensions);
        Validate.Length(value.Length, _valueDim, nameof(value), "[dv]", Dimensions);

        // Stored first: a value the storage type rejects leaves the stream untouched.
        _store.Append(key, value, nameof(key), nameof(value));
        long index = _stream.Count;
        _stream.Append(key);
        double online = _stream.LastOnlineScores.Count > 0 ? _stream.LastOnlineScores[0] : 0;
        bool candidate = _options.Eps is double eps
            ? online >= eps * (1 - 1e-6)
            : _candidateCount < 4 * _options.Top!.Value || online >= MinimumCandidateScore();
        _slotOf[index] = _held.Count;
        _held.Add(new Held(index, online, candidate));
        if (candidate)
        {
            _candidateCount++;
            if (_options.Top is int top && _candidateCount > 4 * top)
            {
                // Top-k mode keeps a pool of 4k candidates: drop the one with the smallest online score (the earliest of equals).
                int worst = -1;
                for (int s = 0; s < _held.Count; s++)
                {
                    if (_held[s].Candidate && (worst < 0 || _held[s].Online < _held[worst].Online || (_held[s].Online == _held[worst].Online && _held[s].Index < _held[worst].Index)))
                    {
                        worst = s;
                    }
                }

                _held[worst] = _held[worst] with { Candidate = false };
                _candidateCount--;
                ReleaseIfUnheld(_held[worst].Index);
            }
        }

        ReleaseIfUnheld(index);
        ReleaseIfUnheld(index - _options.KeepLast);
    }

    /// <summary>Softmax attention of one query over the selection.</summary>
    /// <param name="query">q, length d.</param>
    /// <param name="output">Output, length dv.</param>
    /// <exception cref="ArgumentException">A length does not match, the buffers overlap, or the query is not finite.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void Attend(ReadOnlySpan<float> query, Span<float> output)
    {
        Validate.Length(query.Length, _stream.Gram.Dimension, nameof(query), "[d]", Dimensions);
        Validate.Length(output.Length, _valueDim, nameof(output), "[dv]", Dimensions);
        Validate.NoOverlap(output, query, nameof(query), nameof(output));
        List<long> selected = Selection();

        // The selected tokens move to the first slots; slots before x already hold selected ones, so sel[x] sits at x or later.
        for (int x = 0; x < selected.Count; x++)
        {
            int slot = _slotOf[selected[x]];
            if (slot != x)
            {
                _store.Swap(x, slot);
                (_held[x], _held[slot]) = (_held[slot], _held[x]);
                _slotOf[_held[x].Index] = x;
                _slotOf[_held[slot].Index] = slot;
            }
        }

        if (selected.Count == 0)
        {
            output.Clear();
            return;
        }

        _store.AttendPrefix(selected.Count, query, 1, output, causal: false);
    }

    /// <summary>Frees the stored keys and values.</summary>
    public void Dispose() => _store.Dispose();

    /// <summary>The smallest online score among the candidates.</summary>
    private double MinimumCandidateScore()
    {
        double min = double.PositiveInfinity;
        foreach (Held h in _held)
        {
            min = h.Candidate ? Math.Min(min, h.Online) : min;
        }

        return min;
    }

    /// <summary>Whether a held token must stay: a candidate, one of the first KeepFirst or of the last KeepLast.</summary>
    private bool MustHold(Held held) => held.Candidate || held.Index < _options.KeepFirst || held.Index >= _stream.Count - _options.KeepLast;

    /// <summary>Frees the slot of <paramref name="index"/> if it is held for no reason any more; the last slot's token moves into it.</summary>
    private void ReleaseIfUnheld(long index)
    {
        if (!_slotOf.TryGetValue(index, out int slot) || MustHold(_held[slot]))
        {
            return;
        }

        int last = _held.Count - 1;
        _store.RemoveAt(slot);
        _held[slot] = _held[last];
        _slotOf[_held[slot].Index] = slot;
        _held.RemoveAt(last);
        _slotOf.Remove(index);
    }

    /// <summary>The stream positions attended next: the candidates chosen by their current scores, plus the always-kept keys, sorted.</summary>
    private List<long> Selection()
    {
        GramFactor factor = _stream.Gram.Factor();
        float[] key = new float[_stream.Gram.Dimension];
        var scored = new List<(long Index, double Score)>();
        for (int s = 0; s < _held.Count; s++)
        {
            if (_held[s].Candidate)
            {
                _store.WidenKey(0, s, key);
                scored.Add((_held[s].Index, Math.Clamp(factor.Score(key), 0, 1)));
            }
        }

        IEnumerable<(long Index, double Score)> chosen = _options.Eps is double eps
            ? scored.Where(c => c.Score >= eps * (1 - 1e-9))
            : scored.OrderByDescending(c => c.Score).ThenBy(c => c.Index).Take(_options.Top!.Value);
        IEnumerable<long> always = _held.Where(h => h.Index < _options.KeepFirst || h.Index >= _stream.Count - _options.KeepLast).Select(h => h.Index);
        return [.. chosen.Select(c => c.Index).Concat(always).Distinct().Order()];
    }

    /// <summary>A held token: its stream position, the online score it joined with, and whether it is a candidate.</summary>
    private readonly record struct Held(long Index, double Online, bool Candidate);
}
