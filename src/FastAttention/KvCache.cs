using FastAttention.Kernels;

namespace FastAttention;

/// <summary>Options for <see cref="KvCache"/>. The default stores float32 in pages of 1024 tokens and attends with scale <c>1/sqrt(d)</c>, no window.</summary>
public readonly record struct KvCacheOptions
{
    /// <summary>
    /// The page size <see cref="PageSize"/> = 0 stands for: 1024 tokens. The split-key kernels' chunks stop at page ends, and
    /// decoding 32,768 tokens ran 10-25% faster on pages of 1024 than of 256 (AMD EPYC family 25 model 17, 2026-12-02); a
    /// partly filled last page costs at most 1023 tokens per kv head.
    /// </summary>
    public const int DefaultPageSize = 1024;

    /// <summary>How keys and values are stored (widened to float32 in registers as the kernels read them).</summary>
    public KvElementType ElementType { get; init; }

    /// <summary>Tokens per page: a power of two of at least 16; 0 means <see cref="DefaultPageSize"/>.</summary>
    public int PageSize { get; init; }

    /// <summary>Sliding window: when &gt; 0, the query at position p sees key j only if <c>j &gt; p - Window</c> (or <c>j &lt; Sinks</c>).</summary>
    public int Window { get; init; }

    /// <summary>Attention sinks: with a window, the first this many keys stay visible to every query.</summary>
    public int Sinks { get; init; }

    /// <summary>Score scale <c>s</c>; <see langword="null"/> means <c>1/sqrt(d)</c>.</summary>
    public float? Scale { get; init; }

    /// <summary>Worker threads; 0 means one per core.</summary>
    public int MaxDegreeOfParallelism { get; init; }

    /// <summary>Force a kernel by registry name (see <see cref="AttentionKernels"/>); <see langword="null"/> picks the fastest that takes paged input.</summary>
    public string? Kernel { get; init; }
}

/// <summary>
/// A decoding cache: keys and values appended a token or a block at a time, stored in a <see cref="KvElementType"/> in
/// fixed-size pages of native memory (64-byte aligned), one run of pages per kv head. Growing never copies: a full page is
/// followed by a new one, and only the page table (a small array of page addresses) is replaced when it fills.
/// <see cref="Attend"/> runs exact attention of a block of queries (the last positions, bottom-right causal, grouped-query
/// heads, sliding window and sinks) over the pages in place.
/// <para>
/// Threads: one writer, many readers. <see cref="Append(ReadOnlySpan{float}, ReadOnlySpan{float})"/> must not be called
/// from two threads at once, but any number of threads may call <see cref="Attend"/> while one appends. A reader reads
/// <see cref="Count"/> once and attends over that prefix: the writer stores a token's keys and values before it publishes
/// the larger count, and pages never move, so a reader never sees a half-written token. <see cref="Dispose"/> must not run
/// while any call does.
/// </para>
/// </summary>
public sealed unsafe partial class KvCache : IDisposable
{
    private const int Alignment = 64;

    private readonly int _kvHeads, _headDim, _valueDim, _pageRows;
    private readonly KvElementType _type;
    private readonly KvCacheOptions _options;
    private readonly float _scale;

    /// <summary>Byte offsets inside a page block: keys [PageRows, d], values [PageRows, dv], then (q8) their scales; each 64-byte aligned.</summary>
    private readonly long _valueOffset, _keyScaleOffset, _valueScaleOffset, _pageBytes;

    /// <summary>
    /// What the storage error bound needs, kept as tokens are stored (see <see cref="KvErrorBound"/>): float16 and bfloat16
    /// round each element within an error that grows with its magnitude, so per (kv head, key column) the largest stored
    /// magnitude, <c>[kvHeads, d]</c>; q8 within half its block's scale, so per (kv head, key block) the largest scale,
    /// <c>[kvHeads, ceil(d / 32)]</c>.
    /// </summary>
    private readonly float[] _keyPeaks;

    /// <summary>The writer's row buffer for widening stored rows (max(d, dv) floats).</summary>
    private readonly float[] _widened;

    private PageTable _table;
    private int _count;
    private int _pages;
    private long _blocks;
    private float _valuePeak, _valueScalePeak;
    private bool _disposed;

    /// <summary>An empty cache.</summary>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Key dimension d.</param>
    /// <param name="valueDim">Value dimension dv.</param>
    /// <param name="options">Storage type, page size, window, sinks, scale, threads, kernel.</param>
    /// <exception cref="ArgumentException">A size is not positive, the page size is not a power of two of at least 16, the window or sinks are negative, or the scale is not finite.</exception>
    public KvCache(int kvHeads, int headDim, int valueDim, KvCacheOptions options)
    {
        string sizes = $"kvHeads {kvHeads}, d {headDim}, dv {valueDim}";
        Validate.Positive(kvHeads, "the kv head count", sizes, nameof(kvHeads));
        Validate.Positive(headDim, "the head dimension d", sizes, nameof(headDim));
        Validate.Positive(valueDim, "the value dimension dv", sizes, nameof(valueDim));
        int pageRows = options.PageSize == 0 ? KvCacheOptions.DefaultPageSize : options.PageSize;
        if (pageRows < 16 || (pageRows & (pageRows - 1)) != 0)
        {
            Validate.Fail(nameof(options), "the page size must be a power of two of at least 16", $"PageSize {options.PageSize}", "16, 32, 64, ...",
                "kernels split keys in chunks that never cross a page; 0 means 1024");
        }

        if (options.Window < 0 || options.Sinks < 0)
        {
            Validate.Fail(nameof(options), "the window and the sinks cannot be negative", $"Window {options.Window}, Sinks {options.Sinks}", "0 or more", "Window 0 means no window");
        }

        if (options.Sinks > 0 && options.Window == 0)
        {
            Validate.Fail(nameof(options), "sinks are kept beside a sliding window, and there is none", $"Window 0, Sinks {options.Sinks}", "a Window > 0 with the Sinks",
                "without a window every key is visible already");
        }

        if (!Enum.IsDefined(options.ElementType))
        {
            Validate.Fail(nameof(options), "unknown element type", $"{(int)options.ElementType}", "Float32, Float16, BFloat16 or Q8", "see KvElementType");
        }

        float scale = options.Scale ?? (1f / MathF.Sqrt(headDim));
        if (!float.IsFinite(scale))
        {
            Validate.Fail(nameof(options), "the scale must be a finite number", $"Scale {scale}", "a finite number", "null means 1/sqrt(d)");
        }

        _kvHeads = kvHeads;
        _headDim = headDim;
        _valueDim = valueDim;
        _pageRows = pageRows;
        _type = options.ElementType;
        _options = options;
        _scale = scale;
        int size = KvElementTypes.SizeOf(_type);
        _valueOffset = Align((long)pageRows * headDim * size);
        _keyScaleOffset = _valueOffset + Align((long)pageRows * valueDim * size);
        _valueScaleOffset = _keyScaleOffset + (_type == KvElementType.Q8 ? Align((long)pageRows * Blocks(headDim) * sizeof(Half)) : 0);
        _pageBytes = _valueScaleOffset + (_type == KvElementType.Q8 ? Align((long)pageRows * Blocks(valueDim) * sizeof(Half)) : 0);
        _keyPeaks = new float[(long)kvHeads * (_type == KvElementType.Q8 ? Blocks(headDim) : headDim)];
        _widened = new float[Math.Max(headDim, valueDim)];
        _table = new PageTable(0, kvHeads, _type == KvElementType.Q8);
    }

    /// <summary>Frees the pages if <see cref="Dispose"/> was not called.</summary>
    ~KvCache() => Free();

    /// <summary>Tokens held (per kv head).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Bytes the held tokens' keys and values take in the storage type, q8's scales included.</summary>
    public long BytesUsed => (long)Count * _kvHeads * (KvElementTypes.RowBytes(_type, _headDim) + KvElementTypes.RowBytes(_type, _valueDim));

    /// <summary>Bytes allocated: the pages (a page holds <see cref="KvCacheOptions.PageSize"/> tokens of one kv head) and the page tables.</summary>
    public long BytesReserved => (Volatile.Read(ref _blocks) * _pageBytes) + Volatile.Read(ref _table).Bytes;

    /// <summary>The storage type.</summary>
    public KvElementType ElementType => _type;

    /// <summary>Appends <c>t</c> tokens: their keys and values, encoded into the storage type.</summary>
    /// <param name="keys">Keys, <c>[kvHeads, t, d]</c>, t at least 1; finite.</param>
    /// <param name="values">Values, <c>[kvHeads, t, dv]</c>; finite.</param>
    /// <exception cref="ArgumentException">A length does not match, a value is NaN or infinite, or lies outside the storage type's range
    /// (float16 past +-65504, q8 blocks past +-65504 x 127); nothing is appended then.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public void Append(ReadOnlySpan<float> keys, ReadOnlySpan<float> values) => Append(keys, values, nameof(keys), nameof(values));

    /// <summary>Frees the pages. Calls after this throw <see cref="ObjectDisposedException"/>; no call may run meanwhile.</summary>
    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    /// <inheritdoc/>
    public override string ToString() => $"{KvElementTypes.Name(_type)} KV cache of {Count} tokens ({Sizes}, pages of {_pageRows})";

    /// <summary><see cref="Append(ReadOnlySpan{float}, ReadOnlySpan{float})"/>, with the messages naming the caller's parameters.</summary>
    internal void Append(ReadOnlySpan<float> keys, ReadOnlySpan<float> values, string keyName, string valueName)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long perToken = (long)_kvHeads * _headDim;
        if (keys.Length == 0 || keys.Length % perToken != 0)
        {
            Validate.Fail(keyName, "length is not a whole number of tokens", $"{keys.Length} elements", $"a positive multiple of kvHeads d = {perToken}",
                "pass [kvHeads, t, d] in C order, t tokens at least 1");
        }

        int t = (int)(keys.Length / perToken);
        Validate.Length(values.Length, (long)_kvHeads * t * _valueDim, valueName, "[kvHeads, t, dv]", $"{Sizes}, t {t}");
        const string Consequence = "The cache stores finite keys and values only.";
        FiniteCheck.Require(keys, keyName, _headDim, Consequence);
        FiniteCheck.Require(values, valueName, _valueDim, Consequence);
        int count = _count;
        if ((long)count + t > int.MaxValue)
        {
            Validate.Fail(keyName, "the cache would hold more tokens than an int counts", $"{count} + {t}", $"at most {int.MaxValue}", "start a new cache");
        }

        Store(count, t, keys, values, keyName, valueName);
        Volatile.Write(ref _count, count + t);
    }

    /// <summary>
    /// Exact softmax attention of <c>nq</c> queries per head over the tokens held when the call starts; the queries are the last
    /// nq positions (query i at position <c>p = i + Count - nq</c>), so with <paramref name="causal"/> query i sees keys
    /// <c>j &lt;= p</c>, and with a window only <c>j &gt; p - Window</c> or <c>j &lt; Sinks</c>. Query head h reads kv head
    /// <c>h / (heads / kvHeads)</c>. A query that sees no key (or an empty cache) outputs zeros.
    /// </summary>
    /// <param name="query">Queries, <c>[heads, nq, d]</c>, float32, finite.</param>
    /// <param name="heads">Query heads, a multiple of the kv heads.</param>
    /// <param name="destination">Output, <c>[heads, nq, dv]</c>; must not overlap the query.</param>
    /// <param name="causal">Bottom-right causal masking (the default: decoding).</param>
    /// <returns>The kernel that ran, the flops counted and the storage error bound (<see cref="KvErrorBound"/>; zero for float32).</returns>
    /// <exception cref="ArgumentException">The heads do not divide, a length does not match, the buffers overlap, or the query is not finite.</exception>
    /// <exception cref="OverflowException">The inputs are finite but the result is not (see <see cref="ExactAttention"/>).</exception>
    /// <exception cref="NotSupportedException">No kernel (or not the forced one) reads paged keys and values of this type here; the message says why.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public AttentionRun Attend(ReadOnlySpan<float> query, int heads, Span<float> destination, bool causal = true)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int count = Volatile.Read(ref _count);
        return AttendPrefix(count, Volatile.Read(ref _table), query, heads, destination, causal);
    }

    /// <summary>The sizes as messages show them.</summary>
    private string Sizes => $"kvHeads {_kvHeads}, d {_headDim}, dv {_valueDim}";

    /// <summary>Attention over the first <paramref name="count"/> tokens (a reader's snapshot, or the slots <see cref="LevKvCache"/> selected).</summary>
    internal AttentionRun AttendPrefix(int count, ReadOnlySpan<float> query, int heads, Span<float> destination, bool causal)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return AttendPrefix(count, _table, query, heads, destination, causal);
    }

    private AttentionRun AttendPrefix(int count, PageTable table, ReadOnlySpan<float> query, int heads, Span<float> destination, bool causal)
    {
        // Validation order: heads, query length, destination length, overlap, values.
        Validate.Positive(heads, "the head count", Sizes, nameof(heads));
        if (heads % _kvHeads != 0)
        {
            Validate.Fail(nameof(heads), "kv heads must divide query heads", $"{heads} query heads for {_kvHeads} kv heads", $"a multiple of {_kvHeads}",
                "grouped-query attention shares each kv head among heads / kvHeads query heads");
        }

        long perQuery = (long)heads * _headDim;
        if (query.Length == 0 || query.Length % perQuery != 0)
        {
            Validate.Fail(nameof(query), "length is not a whole number of queries per head", $"{query.Length} elements", $"a positive multiple of heads d = {perQuery}",
                "pass [heads, nq, d] in C order, nq at least 1");
        }

        int nq = (int)(query.Length / perQuery);
        Validate.Length(destination.Length, (long)heads * nq * _valueDim, nameof(destination), "[heads, nq, dv]", $"{Sizes}, heads {heads}, nq {nq}");
        Validate.NoOverlap(destination, query, nameof(query));
        FiniteCheck.Require(query, nameof(query), _headDim, "Non-finite queries are rejected.");
        if (count == 0)
        {
            destination.Clear();
            return new AttentionRun("none", 0) { KvBound = KvErrorBound.FromScoreError(_type, _type, 0, 0, 0) };
        }

        var shape = new AttentionShape(1, heads, nq, count, _headDim, _valueDim, _kvHeads);
        AttentionKernel kernel;
        fixed (nint* keyPages = table.Keys)
        fixed (nint* valuePages = table.Values)
        fixed (nint* keyScalePages = table.KeyScales)
        fixed (nint* valueScalePages = table.ValueScales)
        fixed (float* q = query)
        fixed (float* o = destination)
        {
            var settings = new AttentionCore.Settings(_options.Scale, -0.5f, causal, default, default, _options.MaxDegreeOfParallelism, false, _options.Kernel, 0f);
            AttentionArgs args = AttentionCore.Arguments(shape, settings, _scale, q, Operand(count, table.Capacity, keyPages, keyScalePages, _headDim),
                Operand(count, table.Capacity, valuePages, valueScalePages, _valueDim), o, null, null, null);
            args.Window = _options.Window;
            args.Sinks = _options.Sinks;
            kernel = KernelRegistry.Select(_options.Kernel, in args);
            kernel.Run(args);
        }

        // The pages are native memory: keep the finaliser from freeing them while the kernel reads them.
        GC.KeepAlive(this);
        FiniteCheck.RequireFiniteResult(destination, _valueDim, _scale);
        return new AttentionRun(kernel.Name, 2.0 * heads * VisiblePairs(nq, count, causal) * (_headDim + _valueDim)) { KvBound = Bound(query, shape) };
    }

    /// <summary>The (query, key) pairs the causal limit, the window and the sinks let through: FlopCount's convention counts only those.</summary>
    private double VisiblePairs(int nq, int n, bool causal) => FlopCount.VisiblePairs(nq, n, causal, _options.Window, _options.Sinks);

    /// <summary>The storage error bound for these queries: the bounds kept per column grow with every token stored, so they hold for any prefix.</summary>
    internal KvErrorBound Bound(ReadOnlySpan<float> query, AttentionShape shape)
    {
        if (_type == KvElementType.Float32)
        {
            return KvErrorBound.FromScoreError(_type, _type, 0, 0, 0);
        }

        // The errors grow with the magnitude (or the scale), so the largest one stored is that of the largest magnitude.
        bool q8 = _type == KvElementType.Q8;
        var keyErrors = new double[(long)_kvHeads * _headDim];
        for (int g = 0; g < _kvHeads; g++)
        {
            for (int c = 0; c < _headDim; c++)
            {
                keyErrors[(g * _headDim) + c] = q8
                    ? 0.5 * _keyPeaks[(g * Blocks(_headDim)) + (c / KvOperand.Q8Block)]
                    : KvElementTypes.ElementError(_type, _keyPeaks[(g * _headDim) + c]);
            }
        }

        float peak = Volatile.Read(ref _valuePeak);
        double valueError = q8 ? 0.5 * Volatile.Read(ref _valueScalePeak) : KvElementTypes.ElementError(_type, peak);
        return KvErrorBound.Of(query, shape, _scale, keyErrors, valueError, peak, _type, _type);
    }

    /// <summary>Encodes tokens <paramref name="first"/> .. first + t into their pages (allocated as needed), then updates the error bounds.</summary>
    private void Store(int first, int t, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, string keyName, string valueName)
    {
        EnsurePages(first + t);
        PageTable table = _table;

        // Encode everything before any bound changes: a value out of range throws with the count and the bounds untouched.
        for (int g = 0; g < _kvHeads; g++)
        {
            for (int r = 0; r < t; r++)
            {
                int j = first + r;
                EncodeRow(keys.Slice(((g * t) + r) * _headDim, _headDim), KeyRow(table, g, j), KeyScales(table, g, j), keyName, g, r);
                EncodeRow(values.Slice(((g * t) + r) * _valueDim, _valueDim), ValueRow(table, g, j), ValueScales(table, g, j), valueName, g, r);
            }
        }

        if (_type == KvElementType.Float32)
        {
            return;
        }

        bool q8 = _type == KvElementType.Q8;
        int keyBlocks = Blocks(_headDim), valueBlocks = Blocks(_valueDim);
        float valuePeak = _valuePeak, valueScalePeak = _valueScalePeak;
        fixed (float* row = _widened)
        {
            Span<float> widened = _widened.AsSpan(0, _valueDim);
            for (int g = 0; g < _kvHeads; g++)
            {
                Span<float> peaks = _keyPeaks.AsSpan(g * (q8 ? keyBlocks : _headDim), q8 ? keyBlocks : _headDim);
                for (int j = first; j < first + t; j++)
                {
                    if (q8)
                    {
                        Half* scales = KeyScales(table, g, j);
                        for (int blk = 0; blk < keyBlocks; blk++)
                        {
                            peaks[blk] = Math.Max(peaks[blk], (float)scales[blk]);
                        }

                        scales = ValueScales(table, g, j);
                        for (int blk = 0; blk < valueBlocks; blk++)
                        {
                            valueScalePeak = Math.Max(valueScalePeak, (float)scales[blk]);
                        }
                    }
                    else
                    {
                        KvWiden.Row(_type, KeyRow(table, g, j), null, _headDim, row);
                        System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(peaks, _widened.AsSpan(0, _headDim), peaks);
                    }

                    KvWiden.Row(_type, ValueRow(table, g, j), ValueScales(table, g, j), _valueDim, row);
                    valuePeak = Math.Max(valuePeak, Math.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(widened)));
                }

                // MaxMagnitude keeps the sign of the larger element: the peaks are magnitudes.
                System.Numerics.Tensors.TensorPrimitives.Abs(peaks, peaks);
            }
        }

        Volatile.Write(ref _valuePeak, valuePeak);
        Volatile.Write(ref _valueScalePeak, valueScalePeak);
    }
}
