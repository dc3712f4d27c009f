using System.Numerics.Tensors;
using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>Options for <see cref="PolynomialAttention"/>.</summary>
public readonly record struct PolynomialAttentionOptions
{
    /// <summary>Score scale <c>s</c>; <see langword="null"/> means <c>1/sqrt(d)</c> (the Alman–Song papers use <c>1/d</c>).</summary>
    public float? Scale { get; init; }

    /// <summary>Target relative error eps of the polynomial for e^x on [-R, R]; <see langword="null"/> means 1e-3.</summary>
    public double? RelativeError { get; init; }

    /// <summary>Force the degree g instead of choosing the smallest that reaches <see cref="RelativeError"/>.</summary>
    public int? Degree { get; init; }

    /// <summary>Largest feature count r = C(d + g, g) accepted; 0 means <see cref="PolynomialAttention.DefaultMaxRank"/>.</summary>
    public long MaxRank { get; init; }

    /// <summary>Chebyshev (default) or Taylor.</summary>
    public ExpFitMethod Method { get; init; }

    /// <summary>Causal masking, bottom-right aligned as in <see cref="ExactAttentionOptions.Causal"/>: keys enter a running prefix state as they become visible.</summary>
    public bool Causal { get; init; }

    /// <summary>Worker threads for the non-causal path; 0 means one per core. The output bits are the same for every value.</summary>
    public int MaxDegreeOfParallelism { get; init; }
}

/// <summary>What a polynomial-method call guarantees.</summary>
/// <param name="Range">R, a proven bound on |s q_i.k_j| (Cauchy–Schwarz: s max||q|| max||k||).</param>
/// <param name="Degree">g.</param>
/// <param name="Rank">r = C(d + g, g), the number of features.</param>
/// <param name="PredictedFlops">About 2 r (nq d' + nk d' + nq (dv + 1) + nk (dv + 1)) per head: feature maps and the two thin products.</param>
/// <param name="PolynomialRelativeError">eps, the measured relative error of the polynomial on [-R, R].</param>
/// <param name="OutputBound">2 eps / (1 - eps) max|V|: every output entry is within this of exact attention (exact arithmetic).</param>
public sealed record PolynomialCertificate(double Range, int Degree, long Rank, double PredictedFlops, double PolynomialRelativeError, double OutputBound);

/// <summary>
/// Polynomial-method attention (Alman and Song, "Fast Attention Requires Bounded Entries"; ALGORITHMS.md
/// §2): e^x is replaced by a polynomial P with relative error eps on [-R, R], P(s q.k) is factorised as
/// U1(q) . U2(k) with r = C(d + g, g) monomial features, and
/// <c>out = diag(U1 (U2^T 1))^-1 U1 (U2^T V)</c> costs O(n r dv) instead of O(n^2 d).
/// This first version computes the features and products in double (exactness first; the
/// GEMM-speed, blockwise path is still to come). Causal runs a prefix state over the keys.
/// </summary>
public static class PolynomialAttention
{
    /// <summary>The feature budget used when <see cref="PolynomialAttentionOptions.MaxRank"/> is 0.</summary>
    public const long DefaultMaxRank = 200_000;

    /// <summary>Computes approximate attention into <paramref name="destination"/> and returns its certificate; layouts as in <see cref="ExactAttention"/>.</summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="options">Scale, target error, degree, feature budget.</param>
    /// <returns>The certificate: R, g, r, predicted flops, the polynomial's error and the output bound.</returns>
    /// <exception cref="ArgumentException">Lengths, shape or non-finite inputs are invalid.</exception>
    /// <exception cref="ArgumentOutOfRangeException">R is too wide for the target error, or r exceeds the budget; the message says which.</exception>
    public static PolynomialCertificate Compute(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, PolynomialAttentionOptions options = default)
    {
        CheckInputs(query, key, value, shape, destination);

        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount;
        double s = options.Scale ?? (1.0 / Math.Sqrt(d));
        // R by Cauchy–Schwarz, O(n d): the exact max score would cost the O(n^2 d) this method avoids.
        double range = Math.Max(Math.Abs(s) * InputAnalysis.MaxRowNorm(query, d) * InputAnalysis.MaxRowNorm(key, d), 1e-12);
        double eps = options.RelativeError ?? 1e-3;
        ExpPolynomial polynomial = options.Degree is int g
            ? ExpPolynomial.OfDegree(range, g, options.Method)
            : ExpPolynomial.Fit(range, eps, options.Method);
        if (polynomial.RelativeError >= 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), polynomial.Degree,
                $"Degree {polynomial.Degree} has relative error {polynomial.RelativeError:G3} >= 1 on [-{range:G4}, {range:G4}]: weights could turn negative.");
        }

        var features = new MonomialFeatures(d, polynomial.Degree, options.MaxRank > 0 ? options.MaxRank : DefaultMaxRank);
        int r = features.Count;

        // Symmetric split of w_alpha = c_|alpha| (|alpha|!/alpha!) s^|alpha|: sqrt|w| on each side, the sign on the query side.
        double[] queryWeight = new double[r], keyWeight = new double[r];
        for (int a = 0; a < r; a++)
        {
            int t = features.TotalDegree[a];
            double w = polynomial.Coefficients[t] * features.Multinomial[a] * Math.Pow(s, t);
            double root = Math.Sqrt(Math.Abs(w));
            keyWeight[a] = root;
            queryWeight[a] = w < 0 ? -root : root;
        }

        double maxAbsValue = Run(query, key, value, shape, destination, features, queryWeight, keyWeight, options.Causal, options.MaxDegreeOfParallelism);

        double e = polynomial.RelativeError;
        double flops = 2.0 * r * (((double)nq * shape.HeadCount * (dv + 2)) + ((double)nk * shape.EffectiveKeyValueHeads * (dv + 2))) * shape.BatchSize;
        return new PolynomialCertificate(range, polynomial.Degree, r, flops, e, 2 * e / (1 - e) * maxAbsValue);
    }

    /// <summary>
    /// Power attention with an even integer exponent p, exactly and in linear time: <c>(s q.k)^p =
    /// sum over |alpha| = p of (p!/alpha!) (s q)^alpha (s k)^alpha</c>, so the symmetric tensor features of
    /// degree p factorise the weights with no approximation (ALGORITHMS.md §2, "exact special case").
    /// Same result as <see cref="PowerAttention"/> with <c>Power = p</c>, in O(n r dv) instead of
    /// O(n^2 d); this version carries r = C(d + p, p) features, of which the C(d + p - 1, p) of degree
    /// exactly p have non-zero weight.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="destination">Output, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="power">The even exponent p &gt;= 2.</param>
    /// <param name="scale">The score scale s (default 1).</param>
    /// <param name="causal">Causal masking, bottom-right aligned.</param>
    /// <param name="maxRank">Largest feature count accepted; 0 means <see cref="DefaultMaxRank"/>.</param>
    /// <returns>The number of features used.</returns>
    public static long ComputeEvenPower(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination,
        int power, float scale = 1f, bool causal = false, long maxRank = 0)
    {
        if (power < 2 || power % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(power), power, "The exponent must be an even integer >= 2 (odd or fractional powers of |q.k| have no finite exact factorisation).");
        }

        CheckInputs(query, key, value, shape, destination);
        var features = new MonomialFeatures(shape.HeadDim, power, maxRank > 0 ? maxRank : DefaultMaxRank);
        double[] weight = new double[features.Count];
        for (int a = 0; a < features.Count; a++)
        {
            // Only the monomials of degree exactly p carry weight; p is even, so the weights are positive.
            weight[a] = features.TotalDegree[a] == power ? Math.Sqrt(features.Multinomial[a] * Math.Pow(scale, power)) : 0;
        }

        Run(query, key, value, shape, destination, features, weight, weight, causal, 0);
        return features.Count;
    }

    /// <summary>
    /// out_i = (u1(q_i) M)[0..dv) / (u1(q_i) M)[dv] with M = sum over (visible) keys of u2(k_j) [v_j | 1]:
    /// the factorised attention for any features u1 . u2 = weight. Returns max |V|.
    /// </summary>
    private static double Run(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination,
        MonomialFeatures features, double[] queryWeight, double[] keyWeight, bool causal, int maxDegree)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount, r = features.Count;
        double maxAbsValue = 0;
        int group = shape.HeadCount / shape.EffectiveKeyValueHeads;
        double[] feature = new double[r];
        double[] state = new double[r * (dv + 1)]; // M = U2^T [V | 1], stored transposed: [dv + 1][r]
        double[] acc = new double[dv + 1];
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < shape.EffectiveKeyValueHeads; hk++)
            {
                long kvHead = ((long)b * shape.EffectiveKeyValueHeads) + hk;
                ReadOnlySpan<float> k = key.Slice((int)(kvHead * nk * d), nk * d);
                ReadOnlySpan<float> v = value.Slice((int)(kvHead * nk * dv), nk * dv);
                maxAbsValue = Math.Max(maxAbsValue, System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(v) is var m ? Math.Abs(m) : 0);

                if (causal)
                {
                    // Causal: a running prefix state M_i = sum over visible keys j of u2_j [v_j | 1]; query i
                    // sees keys j <= i + (nk - nq), so keys join the state in order as i advances.
                    for (int h = hk * group; h < (hk + 1) * group; h++)
                    {
                        long head = ((long)b * shape.HeadCount) + h;
                        Array.Clear(state);
                        int joined = 0;
                        for (int i = 0; i < nq; i++)
                        {
                            int visible = (int)Math.Clamp(i + 1L + nk - nq, 0, nk);
                            for (; joined < visible; joined++)
                            {
                                AddKey(features, k.Slice(joined * d, d), v.Slice(joined * dv, dv), keyWeight, feature, state, dv);
                            }

                            Span<float> row = destination.Slice((int)(((head * nq) + i) * dv), dv);
                            if (visible == 0)
                            {
                                row.Clear(); // no visible key: zeros, as the exact kernel
                                continue;
                            }

                            QueryRow(features, query.Slice((int)(((head * nq) + i) * d), d), queryWeight, feature, state, acc, dv, row);
                        }
                    }

                    continue;
                }

                RunNonCausal(query, k, v, shape, destination, features, queryWeight, keyWeight, state, b, hk, group, maxDegree);
            }
        }

        return maxAbsValue;
    }

    private static void CheckInputs(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination)
    {
            if (shape.BatchSize < 1 || shape.HeadCount < 1 || shape.QueryCount < 1 || shape.KeyCount < 1 || shape.HeadDim < 1 || shape.ValueDim < 1
                || shape.HeadCount % shape.EffectiveKeyValueHeads != 0)
            {
                throw new ArgumentException($"Every dimension must be at least 1 and kv heads must divide heads; got ({shape}).", nameof(shape));
            }

            if (query.Length != shape.QueryLength || key.Length != shape.KeyLength || value.Length != shape.ValueLength || destination.Length != shape.OutputLength)
            {
                throw new ArgumentException($"Span lengths (query {query.Length}, key {key.Length}, value {value.Length}, destination {destination.Length}) do not match ({shape}).", nameof(shape));
            }

            if (!System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(query) || !System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(key) || !System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(value))
            {
                throw new ArgumentException("Query, key and value must be finite for the polynomial method (its bound R would be infinite).", nameof(query));
            }
    }

    /// <summary>Keys per partial state in the non-causal pass: fixed, so the sum's order (and the bits) do not depend on the thread count.</summary>
    private const int KeyChunk = 4096;

    /// <summary>Query rows per parallel work item in the non-causal pass.</summary>
    private const int QueryBlock = 512;

    /// <summary>
    /// Non-causal, one kv head: pass 1 sums u2(k_j) [v_j | 1] over fixed key chunks in parallel, then adds the
    /// chunk states in order; pass 2 computes every query row of the group's heads in parallel.
    /// </summary>
    private static unsafe void RunNonCausal(ReadOnlySpan<float> query, ReadOnlySpan<float> k, ReadOnlySpan<float> v, AttentionShape shape, Span<float> destination,
        MonomialFeatures features, double[] queryWeight, double[] keyWeight, double[] state, int b, int hk, int group, int maxDegree)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount, r = features.Count;
        var options = new ParallelOptions { MaxDegreeOfParallelism = maxDegree > 0 ? maxDegree : -1 };
        fixed (float* kp = k, vp = v, qp = query, op = destination)
        {
            nint keys = (nint)kp, values = (nint)vp, queries = (nint)qp, outputs = (nint)op;
            int chunks = (nk + KeyChunk - 1) / KeyChunk;
            double[][] partial = new double[chunks][];
            Parallel.For(0, chunks, options, c =>
            {
                double[] part = new double[state.Length], feature = new double[r];
                for (int j = c * KeyChunk; j < Math.Min(nk, (c + 1) * KeyChunk); j++)
                {
                    AddKey(features, new ReadOnlySpan<float>((float*)keys + ((long)j * d), d), new ReadOnlySpan<float>((float*)values + ((long)j * dv), dv),
                        keyWeight, feature, part, dv);
                }

                partial[c] = part;
            });

            Array.Clear(state);
            foreach (double[] part in partial)
            {
                TensorPrimitives.Add(state, part, state);
            }

            int blocks = (nq + QueryBlock - 1) / QueryBlock;
            Parallel.For(0, group * blocks, options, item =>
            {
                long head = ((long)b * shape.HeadCount) + (hk * group) + (item / blocks);
                int i0 = item % blocks * QueryBlock;
                double[] feature = new double[r], acc = new double[dv + 1];
                for (int i = i0; i < Math.Min(nq, i0 + QueryBlock); i++)
                {
                    long row = (head * nq) + i;
                    QueryRow(features, new ReadOnlySpan<float>((float*)queries + (row * d), d), queryWeight, feature, state, acc, dv,
                        new Span<float>((float*)outputs + (row * dv), dv));
                }
            });
        }
    }

    /// <summary>
    /// M += u2(k) [v | 1]. M is stored transposed, [dv + 1][r], so each update and each query's
    /// product runs along the r features with vectors (TensorPrimitives, in double).
    /// </summary>
    private static void AddKey(MonomialFeatures features, ReadOnlySpan<float> k, ReadOnlySpan<float> v, double[] keyWeight, double[] feature, double[] state, int dv)
    {
        features.Evaluate(k, keyWeight, feature);
        int r = features.Count;
        ReadOnlySpan<double> u = feature.AsSpan(0, r);
        for (int c = 0; c < dv; c++)
        {
            Span<double> column = state.AsSpan(c * r, r);
            TensorPrimitives.MultiplyAdd(u, (double)v[c], column, column);
        }

        Span<double> normaliser = state.AsSpan(dv * r, r);
        TensorPrimitives.Add(u, normaliser, normaliser);
    }

    /// <summary>out = (u1(q) M)[0..dv) / (u1(q) M)[dv].</summary>
    private static void QueryRow(MonomialFeatures features, ReadOnlySpan<float> q, double[] queryWeight, double[] feature, double[] state, double[] acc, int dv, Span<float> output)
    {
        features.Evaluate(q, queryWeight, feature);
        int r = features.Count;
        for (int c = 0; c <= dv; c++)
        {
            acc[c] = TensorPrimitives.Dot<double>(feature.AsSpan(0, r), state.AsSpan(c * r, r));
        }

        // A zero normaliser only arises for even powers with every <q, k> = 0: zeros, as PowerAttention.
        for (int c = 0; c < dv; c++)
        {
            output[c] = acc[dv] == 0 ? 0f : (float)(acc[c] / acc[dv]);
        }
    }
}
