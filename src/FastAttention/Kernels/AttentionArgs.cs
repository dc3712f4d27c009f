namespace FastAttention.Kernels;

/// <summary>
/// Everything a kernel needs, already validated. Tensors are dense C-order:
/// query [batch, heads, nq, d], key [batch, kvHeads, nk, d], value [batch, kvHeads, nk, dv],
/// output [batch, heads, nq, dv]; bias/mask element (b, h, i, j) is at
/// <c>b * BatchStride + h * HeadStride + i * nk + j</c> (stride 0 broadcasts).
/// </summary>
internal unsafe struct AttentionArgs
{
    public float* Query;

    /// <summary>Float32 keys <c>[batch, kvHeads, nk, d]</c> when <see cref="KeyStore"/> is contiguous float32; null otherwise.</summary>
    public float* Key;

    /// <summary>Float32 values when <see cref="ValueStore"/> is contiguous float32; null otherwise.</summary>
    public float* Value;

    /// <summary>The keys as stored: any <see cref="KvElementType"/>, contiguous or paged. Callers that set only <see cref="Key"/> leave it
    /// empty: kernels read <see cref="Keys"/>, which falls back to <see cref="Key"/>.</summary>
    public KvOperand KeyStore;

    /// <summary>The values as stored (the keys' type), or empty as <see cref="KeyStore"/>.</summary>
    public KvOperand ValueStore;

    /// <summary>
    /// Sliding window: when &gt; 0, query i (at position <c>p = i + nk - nq</c>) sees key j only if <c>j &gt; p - Window</c>,
    /// or <c>j &lt; Sinks</c> (attention sinks: the first keys stay visible); with <see cref="Causal"/> also <c>j &lt;= p</c>.
    /// </summary>
    public int Window;

    /// <summary>Keys at the start that every query sees whatever the window (0 = none; used only with a window).</summary>
    public int Sinks;
    public float* Output;
    public float* Bias;
    public bool* Mask;
    public long BiasBatchStride;
    public long BiasHeadStride;
    public long MaskBatchStride;
    public long MaskHeadStride;
    public int Batch;
    public int Heads;
    public int KvHeads;
    public int QueryCount;
    public int KeyCount;
    public int HeadDim;
    public int ValueDim;

    /// <summary>Score scale <c>s</c>, already resolved from the options.</summary>
    public float Scale;

    public bool Causal;

    /// <summary>0 for softmax; p &gt; 0 for power attention <c>|s q.k|^p</c>, computed as softmax of <c>p ln|s q.k|</c>.</summary>
    public float Power;

    /// <summary>Worker threads; 0 or less means one per core.</summary>
    public int MaxDegreeOfParallelism;

    /// <summary>
    /// When not null, a kernel that checks finiteness while K and V are in cache (see
    /// <see cref="AttentionKernel.ChecksFinite"/>) lowers <c>[0]</c> to the first flat index of a
    /// non-finite key element and <c>[1]</c> to that of a value element; they start at long.MaxValue.
    /// </summary>
    public long* FirstNonFinite;

    /// <summary>
    /// When not null, the kernel also writes each output row's softmax statistics:
    /// <c>[2 row]</c> = the row max m of the scaled scores in base 2 (score times log2 e, as the kernel computes them),
    /// <c>[2 row + 1]</c> = the sum l of 2^(score log2 e - m), i.e. of e^(score - m ln 2)
    /// (m = -inf, l = 0 for a row that saw no key), row = (b heads + h) nq + i. Tensor attention merges
    /// rows with them; <c>ExactAttention</c> turns them into log-sum-exp.
    /// </summary>
    public float* RowStats;

    /// <summary>
    /// Tiled kernels: the most floats of packed keys (and copied values) held at once; kv heads are packed and run in
    /// passes that fit. 0 means the default (<c>TiledAttention.DefaultPackBudgetFloats</c>); tests set it low to force several passes.
    /// </summary>
    public long PackBudgetFloats;

    public readonly int GroupSize => Heads / KvHeads;

    /// <summary>The keys as the kernels read them: <see cref="KeyStore"/>, or contiguous float32 over <see cref="Key"/> when it is empty.</summary>
    public readonly KvOperand Keys => KeyStore.Data == null && KeyStore.Pages == null ? KvOperand.Float32(Key, KeyCount, HeadDim) : KeyStore;

    /// <summary>The values as the kernels read them (see <see cref="Keys"/>).</summary>
    public readonly KvOperand Values => ValueStore.Data == null && ValueStore.Pages == null ? KvOperand.Float32(Value, KeyCount, ValueDim) : ValueStore;

    /// <summary>The storage type of keys and values.</summary>
    public readonly KvElementType StorageType => Keys.Type;

    /// <summary>Whether keys and values are plain contiguous float32 (the float32 kernels' input, <see cref="Key"/> and <see cref="Value"/>).</summary>
    public readonly bool IsFloat32 => Keys.IsContiguousFloat32 && Values.IsContiguousFloat32;

    /// <summary>
    /// A power-attention score in the softmax's log domain: |x|^p = e^(p ln|x|), so the same online
    /// softmax normalises it without overflow; a zero score has weight 0 (-infinity).
    /// </summary>
    public readonly float PowerScore(float x)
    {
        float magnitude = MathF.Abs(x);
        return magnitude == 0f ? float.NegativeInfinity : Power * MathF.Log(magnitude);
    }

    /// <summary>Arguments with the dimensions of <paramref name="shape"/> and nothing else set.</summary>
    public static AttentionArgs FromShape(AttentionShape shape) => new()
    {
        Batch = shape.BatchSize,
        Heads = shape.HeadCount,
        KvHeads = shape.EffectiveKeyValueHeads,
        QueryCount = shape.QueryCount,
        KeyCount = shape.KeyCount,
        HeadDim = shape.HeadDim,
        ValueDim = shape.ValueDim,
    };
}
