using System.Buffers;
using System.Numerics.Tensors;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>
/// Dimensions of tensor (Kronecker, 2-simplicial) attention of order k: queries <c>[h, nq, d]</c>, k - 1 key
/// matrices <c>[h, nk, d]</c> and k - 1 value matrices <c>[h, nk, dv]</c>, output <c>[h, nq, dv]</c>.
/// Order 2 is ordinary attention; order 3 is Alman–Song's tensor attention over pairs of keys.
/// </summary>
/// <param name="HeadCount">h (batch folded in).</param>
/// <param name="QueryCount">nq.</param>
/// <param name="KeyCount">nk, the rows of every key and value matrix.</param>
/// <param name="HeadDim">d.</param>
/// <param name="ValueDim">dv.</param>
/// <param name="Order">k &gt;= 2: the number of key (and value) matrices is k - 1.</param>
public readonly record struct TensorAttentionShape(int HeadCount, int QueryCount, int KeyCount, int HeadDim, int ValueDim, int Order = 3)
{
    /// <summary>Elements of the query.</summary>
    public long QueryLength => (long)HeadCount * QueryCount * HeadDim;

    /// <summary>Elements of each key matrix.</summary>
    public long KeyLength => (long)HeadCount * KeyCount * HeadDim;

    /// <summary>Elements of each value matrix.</summary>
    public long ValueLength => (long)HeadCount * KeyCount * ValueDim;

    /// <summary>Elements of the output.</summary>
    public long OutputLength => (long)HeadCount * QueryCount * ValueDim;

    /// <summary>The number of key (and value) matrices, k - 1.</summary>
    public int KeyMatrices => Order - 1;
}

/// <summary>Options for <see cref="TensorAttention"/>.</summary>
public readonly record struct TensorAttentionOptions
{
    /// <summary>Score scale s; <see langword="null"/> means <c>1/d</c>, as in Alman–Song.</summary>
    public float? Scale { get; init; }

    /// <summary>Causal: every key index <c>j_t &lt;= i + (nk - nq)</c> (bottom-right aligned, as <see cref="ExactAttentionOptions.Causal"/>).</summary>
    public bool Causal { get; init; }

    /// <summary>
    /// Sliding windows, one per key matrix (2-simplicial transformers' <c>(w1, w2)</c>): key index j_t ranges over
    /// the last w_t positions up to the causal limit, <c>i' - w_t &lt; j_t &lt;= i'</c> with <c>i' = i + (nk - nq)</c>.
    /// Windows imply causal. <see langword="null"/> means no windows.
    /// </summary>
    public IReadOnlyList<int>? Windows { get; init; }

    /// <summary>Worker threads; 0 means one per core. The output bits are the same for every value.</summary>
    public int MaxDegreeOfParallelism { get; init; }
}

/// <summary>
/// Exact tensor attention (ALGORITHMS.md §3): <c>out_i = sum over tuples softmax_i(s &lt;q_i, k1_j1 o ... o k(k-1)_j(k-1)&gt;)
/// (v1_j1 o ... o v(k-1)_j(k-1))</c>, never forming the <c>nq x nk^(k-1)</c> matrix. For each query and each tuple
/// of the first k - 2 key indices, the "virtual query" <c>q_i o k1_j1 o ...</c> is formed once and attends to the last
/// key matrix with the tiled exact kernel (the 2-simplicial kernel's <c>q o k1</c>-then-GEMM shape: 128 virtual
/// queries x 512 keys per tile, <c>Vector512</c>, online softmax), which also returns each virtual row's softmax
/// max and sum; the rows are then merged per query in a fixed order with the value prefix
/// <c>v1_j1 o ...</c>. Cost <c>4 nq nk^(k-1) d</c> for dv = d. Bits do not depend on the thread count.
/// </summary>
public static class TensorAttention
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
    public static AttentionRun Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key1, ReadOnlySpan<float> key2, ReadOnlySpan<float> value1, ReadOnlySpan<float> value2,
        TensorAttentionShape shape, Span<float> destination, TensorAttentionOptions options = default)
    {
        if (shape.Order != 3)
        {
            throw new ArgumentException($"This overload takes order 3 (two key matrices); the shape says order {shape.Order}. Use the list overload.", nameof(shape));
        }

        return Compute(query, [key1.ToArray(), key2.ToArray()], [value1.ToArray(), value2.ToArray()], shape, destination, options);
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
    public static unsafe AttentionRun Compute(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<float> destination, TensorAttentionOptions options = default)
    {
        Validate(query, keys, values, shape, destination.Length, options);

        // The kernel must export row statistics: the registry's own rule picks it (the decoding kernels refuse them).
        float statistic = 0;
        AttentionArgs probe = AttentionArgs.FromShape(new AttentionShape(1, 1, 1, 1, shape.HeadDim, shape.ValueDim));
        probe.RowStats = &statistic;
        AttentionKernel kernel = KernelRegistry.Attention.First(k => k.WhyNot(in probe) is null);
        float scale = options.Scale ?? (1f / shape.HeadDim);
        int m = shape.KeyMatrices;
        using var pinned = new Pinned(keys, values);
        fixed (float* q = query, o = destination)
        {
            var problem = new Problem(shape, (nint)q, pinned.Keys, pinned.Values, (nint)o, scale, options, kernel);
            double visible = 0;
            for (int h = 0; h < shape.HeadCount; h++)
            {
                visible += options.Causal || options.Windows is not null ? problem.RunPerQuery(h) : problem.RunShared(h);
            }

            FiniteCheck.RequireFiniteResult(destination, shape.ValueDim, scale);

            return new AttentionRun("tensor-" + kernel.Name, 2.0 * visible * (shape.HeadDim + shape.ValueDim));
        }
    }

    /// <summary>
    /// Tensor attention of order k by the polynomial method (ALGORITHMS.md §3): e^x is replaced by a polynomial P
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
        Validate(query, keys, values, shape, destination.Length, default);
        int d = shape.HeadDim, m = shape.KeyMatrices;
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

        // Causal sums run key by key (depth nk); the non-causal ones in blocks.
        long depth = (options.Causal ? shape.KeyCount : Polynomial.FactorisedAttention.SummationDepth(shape.KeyCount, map.Count, false)) + map.Count + (2L * polynomial.Degree) + d + m + 8;
        double flops = (double)map.Count * shape.HeadCount * (((double)shape.QueryCount * ((2.0 * (shape.ValueDim + 1)) + 1)) + ((double)shape.KeyCount * m * ((2.0 * (shape.ValueDim + 1)) + 1)));
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
        double best = double.PositiveInfinity;
        for (int t = 0; t < keys.Count; t++)
        {
            double bound = norms[t];
            for (int u = 0; u < keys.Count; u++)
            {
                bound *= u == t ? 1 : entries[u];
            }

            best = Math.Min(best, bound);
        }

        return Math.Max(Math.Abs(scale) * InputAnalysis.MaxRowNorm(query, headDim) * best * (1 + 1e-12), 1e-12);
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

    private const string TensorWhy = "Tensor attention needs finite inputs.";

    internal static void Validate(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, long destinationLength, TensorAttentionOptions options)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        if (shape.Order < 2 || shape.HeadCount < 1 || shape.QueryCount < 1 || shape.KeyCount < 1 || shape.HeadDim < 1 || shape.ValueDim < 1)
        {
            throw new ArgumentException($"Order must be at least 2 and every dimension at least 1; got {shape}.", nameof(shape));
        }

        if (keys.Count != shape.KeyMatrices || values.Count != shape.KeyMatrices)
        {
            throw new ArgumentException($"Order {shape.Order} takes {shape.KeyMatrices} key and {shape.KeyMatrices} value matrices; got {keys.Count} and {values.Count}.", nameof(keys));
        }

        if (query.Length != shape.QueryLength || destinationLength != shape.OutputLength)
        {
            throw new ArgumentException($"Query ({query.Length}) or destination ({destinationLength}) length does not match {shape}.", nameof(query));
        }

        for (int t = 0; t < shape.KeyMatrices; t++)
        {
            if (keys[t].Length != shape.KeyLength || values[t].Length != shape.ValueLength)
            {
                throw new ArgumentException($"Key {t + 1} ({keys[t].Length}) or value {t + 1} ({values[t].Length}) length does not match {shape}.", nameof(keys));
            }

            FiniteCheck.Require(keys[t].Span, $"key {t + 1}", shape.HeadDim, TensorWhy);
            FiniteCheck.Require(values[t].Span, $"value {t + 1}", shape.ValueDim, TensorWhy);
        }

        FiniteCheck.Require(query, nameof(query), shape.HeadDim, TensorWhy);

        if (options.Windows is { } windows && (windows.Count != shape.KeyMatrices || windows.Any(w => w < 1)))
        {
            throw new ArgumentException($"Windows need one positive size per key matrix ({shape.KeyMatrices}); got [{string.Join(", ", windows)}].", nameof(options));
        }
    }

    /// <summary>One call's inputs, as pointers (pinned by the caller).</summary>
    private sealed unsafe class Problem(TensorAttentionShape shape, nint query, nint[] keys, nint[] values, nint output, float scale, TensorAttentionOptions options, AttentionKernel kernel)
    {
        private int D => shape.HeadDim;

        private int Dv => shape.ValueDim;

        private int Prefix => shape.KeyMatrices - 1;

        private float* Query(int h, int i) => (float*)query + ((((long)h * shape.QueryCount) + i) * D);

        private float* Key(int t, int h, int j) => (float*)keys[t] + ((((long)h * shape.KeyCount) + j) * D);

        private float* Value(int t, int h, int j) => (float*)values[t] + ((((long)h * shape.KeyCount) + j) * Dv);

        private float* Output(int h, int i) => (float*)output + ((((long)h * shape.QueryCount) + i) * Dv);

        /// <summary>Non-causal, no windows: every query sees every tuple; queries go in groups that share the last key matrix.</summary>
        public double RunShared(int h)
        {
            int nk = shape.KeyCount;
            long tuples = (long)Math.Pow(nk, Prefix);
            if (tuples > VirtualRowsPerCall)
            {
                throw new ArgumentException($"Order {shape.Order} with nk = {nk} needs {tuples} virtual queries per query; the exact kernel takes at most {VirtualRowsPerCall} (use the polynomial method).", nameof(shape));
            }

            int group = (int)Math.Clamp(VirtualRowsPerCall / tuples, 1, shape.QueryCount);
            int[] lo = new int[Prefix], hi = new int[Prefix];
            Array.Fill(hi, nk - 1);
            for (int i0 = 0; i0 < shape.QueryCount; i0 += group)
            {
                int count = Math.Min(group, shape.QueryCount - i0);
                Call(h, i0, count, lo, hi, 0, nk - 1, options.MaxDegreeOfParallelism);
            }

            return (double)shape.QueryCount * tuples * nk;
        }

        /// <summary>Causal or windowed: each query has its own key ranges; queries run in parallel, heaviest first.</summary>
        public double RunPerQuery(int h)
        {
            // The last query has the widest ranges (causal limits grow with i; windows are capped).
            double widest = Enumerable.Range(0, Prefix).Aggregate(1.0, (p, t) => p * Math.Max(0, KeyRange(shape, options, shape.QueryCount - 1, t) is var (lo, hi) ? hi - lo + 1 : 0));
            if (widest > VirtualRowsPerCall)
            {
                throw new ArgumentException($"Query {shape.QueryCount - 1} sees {widest} virtual queries; the exact kernel takes at most {VirtualRowsPerCall} per query (use windows or the polynomial method).", nameof(shape));
            }

            double[] work = new double[shape.QueryCount];
            ParallelWork.Run(shape.QueryCount, options.MaxDegreeOfParallelism, () => new NoState(), (item, _) =>
            {
                int i = shape.QueryCount - 1 - item;
                int[] lo = new int[Prefix], hi = new int[Prefix];
                double tuples = 1;
                for (int t = 0; t < Prefix; t++)
                {
                    (lo[t], hi[t]) = KeyRange(shape, options, i, t);
                    tuples *= Math.Max(0, hi[t] - lo[t] + 1);
                }

                (int lastLo, int lastHi) = KeyRange(shape, options, i, Prefix);
                if (tuples == 0 || lastHi < lastLo)
                {
                    new Span<float>(Output(h, i), Dv).Clear(); // no visible tuple: zeros, as exact attention
                    return;
                }

                Call(h, i, 1, lo, hi, lastLo, lastHi, 1);
                work[i] = tuples * (lastHi - lastLo + 1);
            });
            return work.Sum();
        }

        /// <summary>
        /// Queries i0 .. i0+count of head h: virtual queries q_i o k1_j1 o ... over the prefix ranges [lo, hi], against
        /// the last key matrix rows lastLo .. lastHi; then each query's rows merged by their softmax statistics.
        /// </summary>
        private void Call(int h, int i0, int count, int[] lo, int[] hi, int lastLo, int lastHi, int threads)
        {
            int tuples = 1;
            for (int t = 0; t < Prefix; t++)
            {
                tuples *= hi[t] - lo[t] + 1;
            }

            long rows = (long)count * tuples;
            float[] virtualQueries = ArrayPool<float>.Shared.Rent((int)(rows * D));
            float[] partial = ArrayPool<float>.Shared.Rent((int)(rows * Dv));
            float[] stats = ArrayPool<float>.Shared.Rent((int)(rows * 2));
            int[] index = new int[Prefix];
            try
            {
                // Virtual queries, tuple-major per query, the first index slowest (queries in parallel).
                float[] vqs = virtualQueries;
                Parallel.For(0, count, Options(threads), x =>
                {
                    int[] index = new int[Prefix];
                    float* q = Query(h, i0 + x);
                    for (int tuple = 0; tuple < tuples; tuple++)
                    {
                        Decode(tuple, lo, hi, index);
                        Span<float> row = vqs.AsSpan((int)((((long)x * tuples) + tuple) * D), D);
                        new ReadOnlySpan<float>(q, D).CopyTo(row);
                        for (int t = 0; t < Prefix; t++)
                        {
                            TensorPrimitives.Multiply(row, new ReadOnlySpan<float>(Key(t, h, index[t]), D), row);
                        }
                    }
                });

                fixed (float* vq = virtualQueries, po = partial, ps = stats)
                {
                    // Every virtual row attends to the same keys: one head of count x tuples rows.
                    AttentionArgs args = AttentionArgs.FromShape(new AttentionShape(1, 1, (int)rows, lastHi - lastLo + 1, D, Dv));
                    args.Query = vq;
                    args.Key = Key(Prefix, h, lastLo);
                    args.Value = Value(Prefix, h, lastLo);
                    args.Output = po;
                    args.RowStats = ps;
                    args.Scale = scale;
                    args.MaxDegreeOfParallelism = threads;
                    kernel.Run(args);
                }

                // Merge: out_i = sum_tuple w (v1_j1 o ...) o o_tuple / sum_tuple w, w = l 2^(m - max m) (base-2 maxes); vectorised
                // along dv, queries in parallel. Products are summed in float in blocks of MergeBlock tuples, the
                // blocks in double (error ~ (MergeBlock + tuples / MergeBlock) ulp instead of tuples ulp).
                float[] partials = partial, statistics = stats;
                Parallel.For(0, count, Options(threads), x =>
                {
                    int[] index = new int[Prefix];
                    float[] product = new float[Dv], block = new float[Dv];
                    double[] acc = new double[Dv];
                    float max = float.NegativeInfinity;
                    for (int tuple = 0; tuple < tuples; tuple++)
                    {
                        max = MathF.Max(max, statistics[2 * ((x * tuples) + tuple)]);
                    }

                    double total = 0;
                    int inBlock = 0;
                    for (int tuple = 0; tuple < tuples && !float.IsNegativeInfinity(max); tuple++)
                    {
                        int r = (x * tuples) + tuple;
                        double w = statistics[(2 * r) + 1] * double.Exp2(statistics[2 * r] - (double)max); // the kernel's maxes are base 2
                        if (w == 0)
                        {
                            continue;
                        }

                        total += w;
                        Decode(tuple, lo, hi, index);
                        ReadOnlySpan<float> o = partials.AsSpan(r * Dv, Dv);
                        if (Prefix == 0)
                        {
                            o.CopyTo(product);
                        }

                        for (int t = 0; t < Prefix; t++)
                        {
                            TensorPrimitives.Multiply(t == 0 ? o : product, new ReadOnlySpan<float>(Value(t, h, index[t]), Dv), product);
                        }

                        TensorPrimitives.MultiplyAdd(product, (float)w, block, block);
                        if (++inBlock == MergeBlock)
                        {
                            Flush(block, acc);
                            inBlock = 0;
                        }
                    }

                    Flush(block, acc);
                    float* target = Output(h, i0 + x);
                    for (int c = 0; c < Dv; c++)
                    {
                        target[c] = total != 0 ? (float)(acc[c] / total) : 0f; // a row that saw no tuple is 0; a NaN total (overflowed scores) stays NaN
                    }
                });
            }
            finally
            {
                ArrayPool<float>.Shared.Return(virtualQueries);
                ArrayPool<float>.Shared.Return(partial);
                ArrayPool<float>.Shared.Return(stats);
            }
        }

        private static ParallelOptions Options(int threads) => new() { MaxDegreeOfParallelism = threads > 0 ? threads : -1 };

        private static void Flush(float[] block, double[] acc)
        {
            for (int c = 0; c < block.Length; c++)
            {
                acc[c] += block[c];
            }

            Array.Clear(block);
        }

        /// <summary>Tuple number → key indices, the first index slowest.</summary>
        private void Decode(int tuple, int[] lo, int[] hi, int[] index)
        {
            for (int t = Prefix - 1; t >= 0; t--)
            {
                int span = hi[t] - lo[t] + 1;
                index[t] = lo[t] + (tuple % span);
                tuple /= span;
            }
        }
    }

    /// <summary>The key and value matrices pinned for the duration of a call, as pointers.</summary>
    private sealed unsafe class Pinned : IDisposable
    {
        private readonly MemoryHandle[] _handles;

        public Pinned(IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values)
        {
            _handles = [.. keys.Select(k => k.Pin()), .. values.Select(v => v.Pin())];
            Keys = [.. _handles.Take(keys.Count).Select(h => (nint)h.Pointer)];
            Values = [.. _handles.Skip(keys.Count).Select(h => (nint)h.Pointer)];
        }

        public nint[] Keys { get; }

        public nint[] Values { get; }

        public void Dispose()
        {
            foreach (MemoryHandle handle in _handles)
            {
                handle.Dispose();
            }
        }
    }

    private sealed class NoState : IDisposable
    {
        public void Dispose()
        {
        }
    }
}

/// <summary>The float64 oracle for tensor attention of any order: every tuple, log-sum-exp in double. O(nq nk^(k-1) d); for tests and small n.</summary>
public static class ReferenceTensorAttention
{
    /// <summary>Computes order-k tensor attention in double.</summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[h, nq, dv]</c>, double.</param>
    /// <param name="options">Scale, causal, windows (threads are ignored).</param>
    public static void Compute(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, Span<double> destination, TensorAttentionOptions options = default)
    {
        TensorAttention.Validate(query, keys, values, shape, destination.Length, options);
        int d = shape.HeadDim, dv = shape.ValueDim, m = shape.KeyMatrices, nk = shape.KeyCount;
        double s = options.Scale ?? (1.0 / d);
        int[] index = new int[m], lo = new int[m], hi = new int[m];
        double[] product = new double[d], valueProduct = new double[dv];
        for (int h = 0; h < shape.HeadCount; h++)
        {
            for (int i = 0; i < shape.QueryCount; i++)
            {
                bool empty = false;
                for (int t = 0; t < m; t++)
                {
                    (lo[t], hi[t]) = TensorAttention.KeyRange(shape, options, i, t);
                    empty |= hi[t] < lo[t];
                }

                Span<double> row = destination.Slice((int)((((long)h * shape.QueryCount) + i) * dv), dv);
                row.Clear();
                if (empty)
                {
                    continue;
                }

                ReadOnlySpan<float> q = query.Slice((int)((((long)h * shape.QueryCount) + i) * d), d);

                // Two passes over every tuple: the max score, then the weights.
                double max = double.NegativeInfinity, total = 0;
                for (int pass = 0; pass < 2; pass++)
                {
                    Array.Copy(lo, index, m);
                    while (true)
                    {
                        for (int l = 0; l < d; l++)
                        {
                            product[l] = q[l];
                        }

                        Array.Fill(valueProduct, 1.0);
                        for (int t = 0; t < m; t++)
                        {
                            ReadOnlySpan<float> k = keys[t].Span.Slice((int)((((long)h * nk) + index[t]) * d), d);
                            ReadOnlySpan<float> v = values[t].Span.Slice((int)((((long)h * nk) + index[t]) * dv), dv);
                            for (int l = 0; l < d; l++)
                            {
                                product[l] *= k[l];
                            }

                            for (int c = 0; c < dv; c++)
                            {
                                valueProduct[c] *= v[c];
                            }
                        }

                        double score = s * product.Sum();
                        if (pass == 0)
                        {
                            max = Math.Max(max, score);
                        }
                        else
                        {
                            double w = Math.Exp(score - max);
                            total += w;
                            for (int c = 0; c < dv; c++)
                            {
                                row[c] += w * valueProduct[c];
                            }
                        }

                        int next = m - 1;
                        while (next >= 0 && index[next] == hi[next])
                        {
                            index[next] = lo[next];
                            next--;
                        }

                        if (next < 0)
                        {
                            break;
                        }

                        index[next]++;
                    }
                }

                for (int c = 0; c < dv; c++)
                {
                    row[c] /= total;
                }
            }
        }
    }
}
