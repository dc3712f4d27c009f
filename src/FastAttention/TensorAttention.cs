using System.Numerics.Tensors;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// Exact tensor attention (docs/algorithms.md §3): <c>out_i = sum over tuples softmax_i(s &lt;q_i, k1_j1 o ... o k(k-1)_j(k-1)&gt;)
/// (v1_j1 o ... o v(k-1)_j(k-1))</c>, never forming the <c>nq x nk^(k-1)</c> matrix. For each query and each tuple
/// of the first k - 2 key indices, the "virtual query" <c>q_i o k1_j1 o ...</c> is formed once and attends to the last
/// key matrix with the tiled exact kernel (the 2-simplicial kernel's <c>q o k1</c>-then-GEMM shape: 128 virtual
/// queries x 512 keys per tile, <c>Vector512</c>, online softmax), which also returns each virtual row's softmax
/// max and sum; the rows are then merged per query in a fixed order with the value prefix
/// <c>v1_j1 o ...</c>. Cost <c>4 nq nk^(k-1) d</c> for dv = d. Bits do not depend on the thread count.
/// </summary>
public static partial class TensorAttention
{
    /// <summary>Tuples summed in float before their block joins the double accumulator in the merge.</summary>
    private const int MergeBlock = 64;

    /// <summary>Virtual query rows per kernel call (non-causal): bounds the scratch to 2^16 rows.</summary>
    private const int VirtualRowsPerCall = 1 << 16;

    /// <summary>Computes exact order-3 tensor attention into <paramref name="destination"/>.</summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="key1">K1, <c>[h, nk, d]</c>.</param>
    /// <param name="key2">K2, <c>[h, nk, d]</c>.</param>
    /// <param name="value1">V1, <c>[h, nk, dv]</c>.</param>
    /// <param name="value2">V2, <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions (order 3).</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>.</param>
    /// <param name="options">Scale, causal, windows, threads.</param>
    /// <returns>The kernel used and the flops (<c>2 (d + dv)</c> per visible (query, j1, j2) triple).</returns>
    public static unsafe AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key1, ReadOnlySpan<float> key2, ReadOnlySpan<float> value1, ReadOnlySpan<float> value2,
        TensorAttentionShape shape, Span<float> destination, TensorAttentionOptions options = default)
    {
        RequireOrder3(shape);
        fixed (float* k1 = key1, k2 = key2, v1 = value1, v2 = value2)
        {
            return Compute(query, [PinnedMemory.Over(k1, key1.Length), PinnedMemory.Over(k2, key2.Length)], [PinnedMemory.Over(v1, value1.Length), PinnedMemory.Over(v2, value2.Length)], shape, destination, options);
        }
    }

    /// <summary>
    /// Computes exact order-3 tensor attention into <paramref name="destination"/> and each query's log-sum-exp into
    /// <paramref name="logSumExp"/>: <c>L_i = ln sum_(j1,j2) e^(S_i,j1j2)</c> in base e, <c>-inf</c> for a query that sees no pair
    /// (what <see cref="Backward(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, TensorAttentionShape, Span{float}, Span{float}, Span{float}, Span{float}, Span{float}, TensorAttentionOptions, ReadOnlySpan{float})"/>
    /// needs). It comes from the row statistics the forward merges with, so the output has the same bits as without it.
    /// </summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="key1">K1, <c>[h, nk, d]</c>.</param>
    /// <param name="key2">K2, <c>[h, nk, d]</c>.</param>
    /// <param name="value1">V1, <c>[h, nk, dv]</c>.</param>
    /// <param name="value2">V2, <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions (order 3).</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>.</param>
    /// <param name="logSumExp">Log-sum-exp per query, <c>[h, nq]</c>; must not overlap the inputs or the destination.</param>
    /// <param name="options">Scale, causal, windows, threads.</param>
    /// <returns>The kernel used and the flops.</returns>
    /// <exception cref="ArgumentException">As for the overload without <paramref name="logSumExp"/>, or its length is not <c>h nq</c>.</exception>
    public static unsafe AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key1, ReadOnlySpan<float> key2, ReadOnlySpan<float> value1, ReadOnlySpan<float> value2,
        TensorAttentionShape shape, Span<float> destination, Span<float> logSumExp, TensorAttentionOptions options = default)
    {
        RequireOrder3(shape);
        fixed (float* k1 = key1, k2 = key2, v1 = value1, v2 = value2)
        {
            return Compute(query, [PinnedMemory.Over(k1, key1.Length), PinnedMemory.Over(k2, key2.Length)], [PinnedMemory.Over(v1, value1.Length), PinnedMemory.Over(v2, value2.Length)], shape, destination, logSumExp, options);
        }
    }

    /// <summary>Computes exact order-k tensor attention into <paramref name="destination"/> and each query's log-sum-exp (base e, <c>-inf</c> for a query that sees no tuple) into <paramref name="logSumExp"/>; the output has the same bits as without it.</summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>.</param>
    /// <param name="logSumExp">Log-sum-exp per query, <c>[h, nq]</c>; must not overlap the inputs or the destination.</param>
    /// <param name="options">Scale, causal, windows, threads.</param>
    /// <returns>The kernel used and the flops.</returns>
    /// <exception cref="ArgumentException">As for the overload without <paramref name="logSumExp"/>, or its length is not <c>h nq</c>.</exception>
    public static unsafe AttentionRun Compute(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<float> destination, Span<float> logSumExp, TensorAttentionOptions options = default)
    {
        CheckInputs(query, keys, values, shape);
        FastAttention.Validate.Length(destination.Length, shape.OutputLength, nameof(destination), "[h, nq, dv]", shape);
        FastAttention.Validate.Length(logSumExp.Length, (long)shape.HeadCount * shape.QueryCount, nameof(logSumExp), "[h, nq]", shape);
        CheckApart(destination, nameof(destination), query, keys, values);
        CheckApart(logSumExp, nameof(logSumExp), query, keys, values);
        FastAttention.Validate.NoOverlap(logSumExp, (ReadOnlySpan<float>)destination, nameof(destination), nameof(logSumExp));
        CheckWindowsAndFinite(query, keys, values, shape, options);
        fixed (float* lse = logSumExp)
        {
            return Run(query, keys, values, shape, destination, options, (nint)lse);
        }
    }

    private static void RequireOrder3(TensorAttentionShape shape)
    {
        if (shape.Order != 3)
        {
            throw new ArgumentException($"This overload takes order 3 (two key matrices); the shape says order {shape.Order}. Use the list overload.", nameof(shape));
        }
    }

    /// <summary>Computes exact order-k tensor attention into <paramref name="destination"/>.</summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>.</param>
    /// <param name="options">Scale, causal, windows, threads.</param>
    /// <returns>The kernel used and the flops.</returns>
    /// <exception cref="ArgumentException">Counts, lengths, windows or non-finite values are invalid; the message names the input.</exception>
    public static AttentionRun Compute(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<float> destination, TensorAttentionOptions options = default)
    {
        Check(query, keys, values, shape, destination, options);
        return Run(query, keys, values, shape, destination, options, 0);
    }

    /// <summary>The exact engine on validated inputs; <paramref name="logSumExp"/> (<c>[h, nq]</c>) receives the rows' log-sum-exp unless it is 0.</summary>
    private static unsafe AttentionRun Run(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<float> destination, TensorAttentionOptions options, nint logSumExp)
    {
        // One kernel for every call: the registry's rule (or the forced name) for the largest call, which exports row statistics.
        float statistic = 0;
        AttentionArgs probe = AttentionArgs.FromShape(new AttentionShape(1, 1, MaxRowsPerCall(shape, options), shape.KeyCount, shape.HeadDim, shape.ValueDim));
        probe.RowStats = &statistic;
        AttentionKernel kernel = KernelRegistry.Select(options.Kernel, in probe);
        float scale = options.Scale ?? (1f / shape.HeadDim);
        using var pinned = new Pinned(keys, values);
        fixed (float* q = query, o = destination)
        {
            var problem = new Problem(shape, (nint)q, pinned.Keys, pinned.Values, (nint)o, logSumExp, scale, options, kernel);
            double visible = options.Causal || options.Windows is not null ? problem.RunPerQuery() : problem.RunShared();

            FiniteCheck.RequireFiniteResult(destination, shape.ValueDim, scale);

            return new AttentionRun("tensor-" + kernel.Name, 2.0 * visible * (shape.HeadDim + shape.ValueDim));
        }
    }

    /// <summary>
    /// Tensor attention of order k by the polynomial method (docs/algorithms.md §3): e^x is replaced by a polynomial P
    /// with relative error eps on [-R, R], R a proven bound on <c>|s &lt;q, k1 o ... o k(k-1)&gt;|</c>, and the
    /// Khatri–Rao identity <c>(U2 (.) U3)^T (V1 (.) V2) = (U2^T V1) o (U3^T V2)</c> gives the output in
    /// O(n r dv (k - 1)) with r = C(d + g, g), never n^2. Causal (every <c>j_t &lt;= i + nk - nq</c>) keeps a
    /// running state per key matrix. Windows are not supported here (use the exact kernel). The certificate is
    /// the polynomial method's: every output within 2 eps / (1 - eps) prod_t max|V_t| (plus rounding) of exact
    /// tensor attention.
    /// </summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>.</param>
    /// <param name="options">Target error or degree, feature budget, causal, threads; a null scale means <c>1/d</c> here.</param>
    /// <returns>The certificate (R, degree, r, predicted flops, the polynomial's error, the output bound).</returns>
    /// <exception cref="ArgumentException">Inputs are invalid.</exception>
    /// <exception cref="ArgumentOutOfRangeException">R is too wide for eps, or r exceeds the budget.</exception>
    public static unsafe PolynomialCertificate ComputePolynomial(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<float> destination, PolynomialAttentionOptions options = default)
    {
        Check(query, keys, values, shape, destination, default);
        int d = shape.HeadDim;
        double s = options.Scale ?? (1.0 / d);
        double range = RangeBound(query, keys, d, s);
        (Polynomial.ExpPolynomial polynomial, Polynomial.MonomialFeatureMap map) = PolynomialAttention.Prepare(range, s, d, options);
        double maxAbsValue = values.Aggregate(1.0, (p, v) => p * Math.Abs(TensorPrimitives.MaxMagnitude(v.Span)));
        using (var pinned = new Pinned(keys, values))
        {
            fixed (float* q = query, o = destination)
            {
                var flat = new AttentionShape(1, shape.HeadCount, shape.QueryCount, shape.KeyCount, d, shape.ValueDim);
                Polynomial.FactorisedAttention.RunTensor(q, pinned.Keys, pinned.Values, o, flat, map, map.Weights(), options.Causal, options.MaxDegreeOfParallelism);
            }
        }

        return PolynomialCertificateOf(polynomial, map, range, shape, maxAbsValue, options.Causal, 0);
    }

    /// <summary>The certificate of a polynomial tensor run; <paramref name="mergeAdditions"/> counts extra additions of merged key states.</summary>
    internal static PolynomialCertificate PolynomialCertificateOf(Polynomial.ExpPolynomial polynomial, Polynomial.MonomialFeatureMap map, double range, TensorAttentionShape shape, double maxAbsValue, bool causal, int mergeAdditions)
    {
        // Causal sums run key by key (depth nk); the non-causal ones in blocks.
        long depth = (causal ? shape.KeyCount : Polynomial.FactorisedAttention.SummationDepth(shape.KeyCount, map.Count, false)) + map.Count + (2L * polynomial.Degree) + shape.HeadDim + shape.KeyMatrices + 8 + mergeAdditions;
        double flops = (double)map.Count * shape.HeadCount * (((double)shape.QueryCount * ((2.0 * (shape.ValueDim + 1)) + 1)) + ((double)shape.KeyCount * shape.KeyMatrices * ((2.0 * (shape.ValueDim + 1)) + 1)));
        return PolynomialAttention.Certificate(polynomial, range, map.Count, depth, maxAbsValue, flops);
    }

    /// <summary>
    /// A proven bound on <c>|s &lt;q, k1 o ... o k(k-1)&gt;|</c>: by Cauchy–Schwarz and Hölder,
    /// <c>|s| max||q|| max||k_t|| prod_(u != t) max|k_u|</c>, the smallest over t (times 1 + 1e-12 for the rounding of the norms).
    /// </summary>
    /// <param name="query">Q rows.</param>
    /// <param name="keys">The key matrices.</param>
    /// <param name="headDim">d.</param>
    /// <param name="scale">s.</param>
    /// <returns>R.</returns>
    public static double RangeBound(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, int headDim, double scale)
    {
        ArgumentNullException.ThrowIfNull(keys);
        double[] norms = [.. keys.Select(k => InputAnalysis.MaxRowNorm(k.Span, headDim))];
        double[] entries = [.. keys.Select(k => (double)Math.Abs(TensorPrimitives.MaxMagnitude(k.Span)))];
        return RangeOf(scale, InputAnalysis.MaxRowNorm(query, headDim), norms, entries);
    }

    /// <summary>
    /// <see cref="RangeBound"/> from its maxima (which may be maxima over shards): <c>|s| max||q|| min_t (max||k_t|| prod_(u != t) max|k_u|)</c>
    /// times 1 + 1e-12, at least 1e-12.
    /// </summary>
    /// <param name="scale">s.</param>
    /// <param name="maxQueryNorm">max ||q_i||.</param>
    /// <param name="maxKeyNorms">max ||k_t,j|| of each key matrix t.</param>
    /// <param name="maxKeyEntries">max |k_t,j,l| of each key matrix t.</param>
    /// <returns>R.</returns>
    /// <exception cref="ArgumentException">The two lists differ in length or are empty.</exception>
    public static double RangeOf(double scale, double maxQueryNorm, IReadOnlyList<double> maxKeyNorms, IReadOnlyList<double> maxKeyEntries)
    {
        ArgumentNullException.ThrowIfNull(maxKeyNorms);
        ArgumentNullException.ThrowIfNull(maxKeyEntries);
        if (maxKeyNorms.Count == 0 || maxKeyNorms.Count != maxKeyEntries.Count)
        {
            throw new ArgumentException($"{maxKeyNorms.Count} key norms and {maxKeyEntries.Count} key entries: one of each per key matrix, at least one.", nameof(maxKeyEntries));
        }

        double best = double.PositiveInfinity;
        for (int t = 0; t < maxKeyNorms.Count; t++)
        {
            double bound = maxKeyNorms[t];
            for (int u = 0; u < maxKeyNorms.Count; u++)
            {
                bound *= u == t ? 1 : maxKeyEntries[u];
            }

            best = Math.Min(best, bound);
        }

        return Math.Max(Math.Abs(scale) * maxQueryNorm * best * (1 + 1e-12), 1e-12);
    }

    /// <summary>(query, tuple) pairs the causal limit and windows let through, over every head.</summary>
    internal static double VisibleTuples(TensorAttentionShape shape, TensorAttentionOptions options)
    {
        double total = 0;
        for (int i = 0; i < shape.QueryCount; i++)
        {
            double tuples = 1;
            for (int t = 0; t < shape.KeyMatrices; t++)
            {
                (int lo, int hi) = KeyRange(shape, options, i, t);
                tuples *= Math.Max(0, hi - lo + 1);
            }

            total += tuples;
        }

        return total * shape.HeadCount;
    }

    /// <summary>The key index range [lo, hi] query i may use for key matrix t (empty when hi &lt; lo).</summary>
    internal static (int Lo, int Hi) KeyRange(TensorAttentionShape shape, TensorAttentionOptions options, int i, int t)
    {
        if (!options.Causal && options.Windows is null)
        {
            return (0, shape.KeyCount - 1);
        }

        long hi = Math.Min((long)i + shape.KeyCount - shape.QueryCount, shape.KeyCount - 1);
        long lo = options.Windows is { } w ? Math.Max(0, hi - w[t] + 1) : 0;
        return ((int)Math.Max(lo, 0), (int)hi);
    }

    /// <summary>
    /// The most virtual query rows one kernel call of the exact engine holds: a group of queries times the tuples of the
    /// first k - 2 key indices (non-causal), or the last query's tuples (causal or windowed, one query per call; the last
    /// query has the widest ranges, as causal limits grow with i and windows are capped).
    /// </summary>
    /// <exception cref="ArgumentException">More than <see cref="VirtualRowsPerCall"/> rows per query: the polynomial method's work.</exception>
    private static int MaxRowsPerCall(TensorAttentionShape shape, TensorAttentionOptions options)
    {
        int prefix = shape.KeyMatrices - 1;
        if (options.Causal || options.Windows is not null)
        {
            double widest = Enumerable.Range(0, prefix).Aggregate(1.0, (p, t) => p * Math.Max(0, KeyRange(shape, options, shape.QueryCount - 1, t) is var (lo, hi) ? hi - lo + 1 : 0));
            if (widest > VirtualRowsPerCall)
            {
                throw new ArgumentException($"Query {shape.QueryCount - 1} sees {widest} virtual queries; the exact kernel takes at most {VirtualRowsPerCall} per query (use windows or the polynomial method).", nameof(shape));
            }

            return (int)Math.Max(widest, 1);
        }

        double tuples = Math.Pow(shape.KeyCount, prefix);
        if (tuples > VirtualRowsPerCall)
        {
            throw new ArgumentException($"Order {shape.Order} with nk = {shape.KeyCount} needs {tuples} virtual queries per query; the exact kernel takes at most {VirtualRowsPerCall} (use the polynomial method).", nameof(shape));
        }

        return (int)(GroupOf(shape, (long)tuples) * tuples);
    }

    /// <summary>Queries per kernel call when every query sees all <paramref name="tuples"/> tuples: as many as fit in <see cref="VirtualRowsPerCall"/> rows.</summary>
    private static int GroupOf(TensorAttentionShape shape, long tuples) => (int)Math.Clamp(VirtualRowsPerCall / tuples, 1, shape.QueryCount);

    private const string TensorWhy = "Tensor attention needs finite inputs.";

    /// <summary>The one validator's order for tensor attention: shape, matrix counts, lengths, destination, overlap; then windows and finiteness.</summary>
    internal static void Check<TDestination>(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<TDestination> destination, TensorAttentionOptions options)
        where TDestination : struct
    {
        CheckInputs(query, keys, values, shape);
        FastAttention.Validate.Length(destination.Length, shape.OutputLength, nameof(destination), "[h, nq, dv]", shape);
        CheckApart(destination, nameof(destination), query, keys, values);
        CheckWindowsAndFinite(query, keys, values, shape, options);
    }

    /// <summary>The shape (order, positive sizes, matrix counts), then the lengths of the query, key and value matrices.</summary>
    internal static void CheckInputs(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values, TensorAttentionShape shape)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        if (shape.Order < 2)
        {
            FastAttention.Validate.Fail(nameof(shape), "the order must be at least 2", $"order {shape.Order}", "2 (ordinary attention) or more", "order k takes k - 1 key and k - 1 value matrices");
        }

        FastAttention.Validate.Positive(shape.HeadCount, "the head count", shape);
        FastAttention.Validate.Positive(shape.QueryCount, "the query count nq", shape);
        FastAttention.Validate.Positive(shape.KeyCount, "the key count nk", shape);
        FastAttention.Validate.Positive(shape.HeadDim, "the head dimension d", shape);
        FastAttention.Validate.Positive(shape.ValueDim, "the value dimension dv", shape);
        if (keys.Count != shape.KeyMatrices || values.Count != shape.KeyMatrices)
        {
            FastAttention.Validate.Fail(nameof(keys), $"order {shape.Order} takes {shape.KeyMatrices} key and {shape.KeyMatrices} value matrices", $"{keys.Count} and {values.Count}",
                $"{shape.KeyMatrices} key and {shape.KeyMatrices} value matrices", "pass one key and one value matrix per factor of the tuple, or change the order");
        }

        FastAttention.Validate.Length(query.Length, shape.QueryLength, nameof(query), "[h, nq, d]", shape);
        for (int t = 0; t < shape.KeyMatrices; t++)
        {
            FastAttention.Validate.Length(keys[t].Length, shape.KeyLength, $"key {t + 1}", "[h, nk, d]", shape);
            FastAttention.Validate.Length(values[t].Length, shape.ValueLength, $"value {t + 1}", "[h, nk, dv]", shape);
        }
    }

    /// <summary>A destination (any element type) must share no memory with the query, key or value matrices.</summary>
    internal static void CheckApart<TDestination>(Span<TDestination> destination, string name, ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values)
        where TDestination : struct
    {
        FastAttention.Validate.NoOverlap(destination, query, nameof(query), name);
        for (int t = 0; t < keys.Count; t++)
        {
            FastAttention.Validate.NoOverlap(destination, keys[t].Span, $"key {t + 1}", name);
            FastAttention.Validate.NoOverlap(destination, values[t].Span, $"value {t + 1}", name);
        }
    }

    /// <summary>Finite query, keys and values (tensor attention has no non-finite mode); one positive window per key matrix.</summary>
    internal static void CheckWindowsAndFinite(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, TensorAttentionOptions options)
    {
        for (int t = 0; t < shape.KeyMatrices; t++)
        {
            FiniteCheck.Require(keys[t].Span, $"key {t + 1}", shape.HeadDim, TensorWhy);
            FiniteCheck.Require(values[t].Span, $"value {t + 1}", shape.ValueDim, TensorWhy);
        }

        FiniteCheck.Require(query, nameof(query), shape.HeadDim, TensorWhy);

        if (options.Windows is { } windows && (windows.Count != shape.KeyMatrices || windows.Any(w => w < 1)))
        {
            throw new ArgumentException($"Windows need one positive size per key matrix ({shape.KeyMatrices}); got [{string.Join(", ", windows)}].", nameof(options));
        }
    }
}
