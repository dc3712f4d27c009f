using System.Numerics.Tensors;

namespace FastAttention.Distributed;

/// <summary>
/// The polynomial method (docs/algorithms.md §2) and polynomial tensor attention (§3) with keys and queries sharded over
/// ranks, non-causal. The method's state is mergeable: each rank forms the unweighted key state <c>U2^T [V | 1]</c> of its
/// key shard (<see cref="PolynomialFactors.KeyState"/>), the states are summed over ranks in rank order
/// (<see cref="Communicator.AllreduceSum(Span{double})"/>, the same bits everywhere), and each rank applies the sum to its
/// query shard's features. Everything global is agreed first: R from the largest query and key norms over every rank, the
/// input scales from the largest entries, max |V| from every value (each an all-reduce max, exact), so every rank fits the
/// same polynomial and the certificate is the one-process certificate with the rounding bound grown by the P - 1 extra
/// additions. Outputs equal one process's up to the re-associated state sum (both lie within the certificate's rounding
/// bound of the exact polynomial attention). Causal masking is refused: it would need an exclusive scan of the states in
/// rank order plus each query's visible keys of the diagonal block, which live on other ranks (ring attention does causal).
/// </summary>
public static class DistributedPolynomialAttention
{
    /// <summary>Computes this rank's query rows of polynomial-method attention over every rank's keys.</summary>
    /// <param name="comm">The ranks.</param>
    /// <param name="query">This rank's queries, <c>[batch, heads, queryShard.Count, d]</c>.</param>
    /// <param name="key">This rank's keys, <c>[batch, kvHeads, keyShard.Count, d]</c>.</param>
    /// <param name="value">This rank's values, <c>[batch, kvHeads, keyShard.Count, dv]</c>.</param>
    /// <param name="shape">The global dimensions.</param>
    /// <param name="queryShard">This rank's query tokens.</param>
    /// <param name="keyShard">This rank's key tokens.</param>
    /// <param name="destination">This rank's output, <c>[batch, heads, queryShard.Count, dv]</c>.</param>
    /// <param name="options">Scale, target error, degree, feature budget (not causal).</param>
    /// <returns>The certificate, the same on every rank: R, g, r, the polynomial's error and the output bound for the whole problem.</returns>
    /// <exception cref="ArgumentException">Causal, or a bad shape (on every rank, when every rank passes the same).</exception>
    /// <exception cref="ArgumentOutOfRangeException">R too wide for the error, or r over the budget (on every rank alike).</exception>
    /// <exception cref="DistributedException">A rank's shard or tensors (or number of matrices) do not match, hold non-finite values, or its shape or options differ from rank 0's; every rank throws it.</exception>
    public static PolynomialCertificate Compute(Communicator comm, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape,
        SequenceShard queryShard, SequenceShard keyShard, Span<float> destination, PolynomialAttentionOptions options = default)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, kvHeads = shape.EffectiveKeyValueHeads;
        (int nq, int nk) = ShardInputs.Attention(comm, query, key, value, shape, queryShard, keyShard, destination,
            new ShardInputs.Call(OptionsLegend, Describe(options), () => RefuseCausal(options), FiniteReason));
        double[] maxima = Maxima(comm, [PolynomialFactors.MaxRowNorm(query, d), PolynomialFactors.MaxRowNorm(key, d), MaxAbs(query), MaxAbs(key), MaxAbs(value)]);
        double s = options.Scale ?? (1.0 / Math.Sqrt(d));
        var factors = PolynomialFactors.Prepare(PolynomialFactors.RangeOf(s, maxima[0], maxima[1]), d, dv, s, options);
        double queryScale = PolynomialFactors.InputScale(maxima[2]), keyScale = PolynomialFactors.InputScale(maxima[3]);

        // Every kv head's state in one sum over ranks.
        int length = factors.StateLength, heads = shape.BatchSize * kvHeads, group = shape.HeadCount / kvHeads;
        double[] states = new double[(long)heads * length];
        for (int kv = 0; kv < heads; kv++)
        {
            factors.KeyState(key.Slice(kv * nk * d, nk * d), value.Slice(kv * nk * dv, nk * dv), keyScale, options.MaxDegreeOfParallelism).CopyTo(states, (long)kv * length);
        }

        comm.AllreduceSum(states);
        for (int h = 0; h < shape.BatchSize * shape.HeadCount; h++)
        {
            int kv = (h / shape.HeadCount * kvHeads) + (h % shape.HeadCount / group);
            factors.ApplyToQueries(query.Slice(h * nq * d, nq * d), states.AsSpan(kv * length, length), queryScale, keyScale, destination.Slice(h * nq * dv, nq * dv), options.MaxDegreeOfParallelism);
        }

        return factors.Certificate(shape, maxima[4], comm.Size);
    }

    /// <summary>
    /// Computes this rank's query rows of polynomial tensor attention (<see cref="TensorAttention.ComputePolynomial"/>) over
    /// every rank's keys. The weight of a query and a key tuple factorises over the tuple's matrices, so each key matrix's
    /// state <c>U_t^T [V_t | 1]</c> is a sum over that matrix's own keys: every matrix is sharded by <paramref name="keyShard"/>,
    /// each matrix's states are summed over ranks, and only then multiplied entrywise (the product of sums, not a sum of products).
    /// </summary>
    /// <param name="comm">The ranks.</param>
    /// <param name="query">This rank's queries, <c>[h, queryShard.Count, d]</c>.</param>
    /// <param name="keys">This rank's rows of K1 .. K(k-1), each <c>[h, keyShard.Count, d]</c>.</param>
    /// <param name="values">This rank's rows of V1 .. V(k-1), each <c>[h, keyShard.Count, dv]</c>.</param>
    /// <param name="shape">The global dimensions.</param>
    /// <param name="queryShard">This rank's query tokens.</param>
    /// <param name="keyShard">This rank's key tokens (of every key matrix).</param>
    /// <param name="destination">This rank's output, <c>[h, queryShard.Count, dv]</c>.</param>
    /// <param name="options">Target error or degree, feature budget (not causal); a null scale means <c>1/d</c> here, as in the one-process method.</param>
    /// <returns>The certificate, the same on every rank.</returns>
    /// <exception cref="ArgumentException">Causal or a bad shape (on every rank, when every rank passes the same).</exception>
    /// <exception cref="ArgumentOutOfRangeException">R too wide for the error, or r over the budget.</exception>
    /// <exception cref="DistributedException">A rank's shard or tensors (or number of matrices) do not match, hold non-finite values, or its shape or options differ from rank 0's; every rank throws it.</exception>
    public static PolynomialCertificate ComputeTensor(Communicator comm, ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        TensorAttentionShape shape, SequenceShard queryShard, SequenceShard keyShard, Span<float> destination, PolynomialAttentionOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(comm);
        int m = shape.KeyMatrices, d = shape.HeadDim, dv = shape.ValueDim, heads = shape.HeadCount;
        Exception? global = null, local = null;
        int nq = 0, nk = 0;
        try
        {
            RefuseCausal(options);
            ShardInputs.CheckShape(new AttentionShape(1, heads, shape.QueryCount, shape.KeyCount, d, dv));
            if (shape.Order < 2)
            {
                throw new ArgumentException($"shape: order {shape.Order} is below 2 (a query and at least one key matrix).", nameof(shape));
            }
        }
        catch (ArgumentException e)
        {
            global = e;
        }

        if (global is null)
        {
            try
            {
                ArgumentNullException.ThrowIfNull(keys);
                ArgumentNullException.ThrowIfNull(values);
                if (keys.Count != m || values.Count != m)
                {
                    throw new ArgumentException($"keys: order {shape.Order} needs {m} key and value matrices; got {keys.Count} keys and {values.Count} values.", nameof(keys));
                }

                (nq, nk) = ShardInputs.Shards(comm, new AttentionShape(1, heads, shape.QueryCount, shape.KeyCount, d, dv), queryShard, keyShard);
                ShardInputs.Length(query.Length, heads, nq, d, nameof(query), "[h, local nq, d]");
                ShardInputs.Length(destination.Length, heads, nq, dv, nameof(destination), "[h, local nq, dv]");
                ShardInputs.Finite(query, d, nameof(query), FiniteReason);
                for (int t = 0; t < m; t++)
                {
                    ShardInputs.Length(keys[t].Length, heads, nk, d, $"keys[{t}]", "[h, local nk, d]");
                    ShardInputs.Length(values[t].Length, heads, nk, dv, $"values[{t}]", "[h, local nk, dv]");
                    ShardInputs.Finite(keys[t].Span, d, $"keys[{t}]", FiniteReason);
                    ShardInputs.Finite(values[t].Span, dv, $"values[{t}]", FiniteReason);
                }
            }
            catch (Exception e) when (e is ArgumentException or OverflowException)
            {
                local = e;
            }
        }

        long[] descriptor = [shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, shape.Order, .. Describe(options)];
        ShardInputs.Agree(comm, descriptor, $"heads, nq, nk, d, dv, order, {OptionsLegend}", global, local);

        // Local maxima, then one max over ranks: query norm and entry, then per matrix its key norm, key entry and value entry.
        double[] mine = [PolynomialFactors.MaxRowNorm(query, d), MaxAbs(query), .. Enumerable.Range(0, m).SelectMany(t => new[] { PolynomialFactors.MaxRowNorm(keys[t].Span, d), MaxAbs(keys[t].Span), MaxAbs(values[t].Span) })];
        double[] maxima = Maxima(comm, mine);
        double[] keyNorms = [.. Enumerable.Range(0, m).Select(t => maxima[2 + (3 * t)])], keyEntries = [.. Enumerable.Range(0, m).Select(t => maxima[3 + (3 * t)])];
        double s = options.Scale ?? (1.0 / d);
        var factors = PolynomialFactors.Prepare(TensorAttention.RangeOf(s, maxima[0], keyNorms, keyEntries), d, dv, s, options);
        double queryScale = PolynomialFactors.InputScale(maxima[1]);
        double[] keyScales = [.. keyEntries.Select(PolynomialFactors.InputScale)];
        double keyScale = keyScales.Aggregate(1.0, (x, y) => x * y);

        int length = factors.StateLength;
        double[] states = new double[(long)heads * m * length];
        for (int h = 0; h < heads; h++)
        {
            for (int t = 0; t < m; t++)
            {
                factors.KeyState(keys[t].Span.Slice(h * nk * d, nk * d), values[t].Span.Slice(h * nk * dv, nk * dv), keyScales[t], options.MaxDegreeOfParallelism).CopyTo(states, ((long)h * m + t) * length);
            }
        }

        comm.AllreduceSum(states);
        for (int h = 0; h < heads; h++)
        {
            // Khatri–Rao: the head's state is the entrywise product of its matrices' summed states, in matrix order.
            Span<double> product = states.AsSpan(h * m * length, length);
            for (int t = 1; t < m; t++)
            {
                TensorPrimitives.Multiply(product, states.AsSpan(((h * m) + t) * length, length), product);
            }

            factors.ApplyToQueries(query.Slice(h * nq * d, nq * d), product, queryScale, keyScale, destination.Slice(h * nq * dv, nq * dv), options.MaxDegreeOfParallelism);
        }

        double maxAbsValue = Enumerable.Range(0, m).Aggregate(1.0, (x, t) => x * maxima[4 + (3 * t)]);
        return factors.TensorCertificate(shape, maxAbsValue, comm.Size);
    }

    private const string OptionsLegend = "scale bits, relative error bits, degree, max rank, method, causal";

    private const string FiniteReason = "the polynomial method needs finite inputs";

    /// <summary>The options that decide the polynomial and so the state's length (not the thread count).</summary>
    private static long[] Describe(PolynomialAttentionOptions options) =>
        [ShardInputs.Bits(options.Scale), ShardInputs.Bits(options.RelativeError), options.Degree ?? -1, options.MaxRank, (long)options.Method, options.Causal ? 1 : 0];

    private static void RefuseCausal(PolynomialAttentionOptions options)
    {
        if (options.Causal)
        {
            throw new ArgumentException("options: Causal is not supported with sharded keys (a causal state needs the earlier ranks' prefix and the diagonal block's keys); use RingAttention for causal attention.", nameof(options));
        }
    }

    /// <summary>Each entry's maximum over ranks, in one gather.</summary>
    private static double[] Maxima(Communicator comm, double[] local)
    {
        double[][] all = comm.Allgather<double>(local);
        return [.. Enumerable.Range(0, local.Length).Select(i => all.Max(r => r[i]))];
    }

    private static double MaxAbs(ReadOnlySpan<float> x) => x.IsEmpty ? 0 : Math.Abs(TensorPrimitives.MaxMagnitude(x));
}
