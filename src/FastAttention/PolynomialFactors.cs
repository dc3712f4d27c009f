using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>
/// The polynomial method (docs/algorithms.md §2) split at its mergeable state, for keys that arrive in pieces — shards on
/// other processes, or a stream: <see cref="KeyState"/> is the unweighted <c>U2^T [V | 1]</c> of some keys (r x (dv + 1),
/// padded), states of disjoint key sets add, and <see cref="ApplyToQueries"/> turns the summed state into outputs for any
/// queries, <c>out = diag(U1 (U2^T 1))^-1 U1 (U2^T V)</c>. With every key's state summed in one call and the same input
/// scales this gives the bits of <see cref="PolynomialAttention.Compute"/> (non-causal); summed in another order, the state
/// differs by the rounding of the re-associated double sum, which <see cref="Certificate"/> counts.
/// <para>
/// Features are formed at input scales (<see cref="InputScale"/>: one over the largest |entry| of all keys, or of all
/// queries) so high powers neither overflow nor vanish; every piece must use the same key scale, and the query pass must be
/// given it. For tensor attention the per-key-matrix states are summed separately and multiplied entrywise (the Khatri–Rao
/// identity), and the query pass is given the product of the key scales.
/// </para>
/// </summary>
public sealed class PolynomialFactors
{
    private readonly ExpPolynomial _polynomial;
    private readonly MonomialFeatureMap _map;
    private readonly double[] _weights;

    private PolynomialFactors(ExpPolynomial polynomial, MonomialFeatureMap map, double range, double scale, int valueDim)
    {
        _polynomial = polynomial;
        _map = map;
        _weights = map.Weights();
        Range = range;
        Scale = scale;
        ValueDim = valueDim;
        (int columns, _) = FactorisedAttention.Layout(map, valueDim, 0);
        StateLength = map.PaddedCount * columns;
    }

    /// <summary>R, the bound on every |s q.k| the polynomial was fitted for.</summary>
    public double Range { get; }

    /// <summary>s, the score scale.</summary>
    public double Scale { get; }

    /// <summary>d.</summary>
    public int HeadDim => _map.Dimension;

    /// <summary>dv.</summary>
    public int ValueDim { get; }

    /// <summary>g, the polynomial's degree.</summary>
    public int Degree => _polynomial.Degree;

    /// <summary>r = C(d + g, g), the number of features.</summary>
    public long FeatureCount => _map.Count;

    /// <summary>eps, the polynomial's measured relative error on [-R, R].</summary>
    public double RelativeError => _polynomial.RelativeError;

    /// <summary>Doubles in one head's key state (r rounded up to 4, times dv + 1 rounded up to 3).</summary>
    public int StateLength { get; }

    /// <summary>
    /// The polynomial and features for a range, as <see cref="PolynomialAttention.Compute"/> prepares them: fitted to the
    /// options' relative error (or of its forced degree), within its feature budget.
    /// </summary>
    /// <param name="range">R, a bound on every |s q.k| (<see cref="RangeOf"/>), at least 1e-12.</param>
    /// <param name="headDim">d.</param>
    /// <param name="valueDim">dv.</param>
    /// <param name="scale">s.</param>
    /// <param name="options">Target error, degree, feature budget, method (its scale and causal flag are not read).</param>
    /// <returns>The factors.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A size below 1, a range that is not positive and finite, a range too wide for the error, or r over the budget.</exception>
    public static PolynomialFactors Prepare(double range, int headDim, int valueDim, double scale, PolynomialAttentionOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(valueDim, 1);
        if (!(range >= 1e-12 && double.IsFinite(range)))
        {
            throw new ArgumentOutOfRangeException(nameof(range), range, "R must be finite and at least 1e-12 (see RangeOf).");
        }

        if (!double.IsFinite(scale))
        {
            throw new ArgumentOutOfRangeException(nameof(scale), scale, "The score scale must be finite.");
        }

        (ExpPolynomial polynomial, MonomialFeatureMap map) = PolynomialAttention.Prepare(range, scale, headDim, options);
        return new PolynomialFactors(polynomial, map, range, scale, valueDim);
    }

    /// <summary>The largest Euclidean row norm of rows of length <paramref name="headDim"/>, summed in double (0 for no rows): one side of <see cref="RangeOf"/>.</summary>
    /// <param name="rows">Rows, <c>[n, d]</c>.</param>
    /// <param name="headDim">d.</param>
    /// <returns>max ||row||.</returns>
    public static double MaxRowNorm(ReadOnlySpan<float> rows, int headDim)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        return InputAnalysis.MaxRowNorm(rows, headDim);
    }

    /// <summary>R = |s| max||q|| max||k|| (1 + 1e-12), at least 1e-12: <see cref="PolynomialAttention.RangeBound"/> from the two largest norms (which may be maxima over shards).</summary>
    /// <param name="scale">s.</param>
    /// <param name="maxQueryNorm">max ||q_i|| over every query.</param>
    /// <param name="maxKeyNorm">max ||k_j|| over every key.</param>
    /// <returns>R.</returns>
    public static double RangeOf(double scale, double maxQueryNorm, double maxKeyNorm) =>
        Math.Max(Math.Abs(scale) * maxQueryNorm * maxKeyNorm * (1 + 1e-12), 1e-12);

    /// <summary>The input scale features are formed at: <c>1 / maxAbs</c>, or 1 when it is 0.</summary>
    /// <param name="maxAbs">max |x| over every row of the tensor (every shard's).</param>
    /// <returns>The scale.</returns>
    public static double InputScale(double maxAbs) => maxAbs > 0 ? 1.0 / maxAbs : 1.0;

    /// <summary>
    /// The unweighted key state <c>sum_j f(k_j s_k) [v_j | 1]^T</c> of one head's keys, in double (fixed chunks of keys in
    /// parallel, added in chunk order: the same bits for any thread count). States of disjoint keys add entrywise.
    /// </summary>
    /// <param name="keys">K, <c>[n, d]</c>, finite (n may be 0).</param>
    /// <param name="values">V, <c>[n, dv]</c>, finite.</param>
    /// <param name="keyScale">s_k, the same for every piece (<see cref="InputScale"/> of max |K| over every key).</param>
    /// <param name="maxDegreeOfParallelism">Threads; 0 means one per core.</param>
    /// <returns>The state, <see cref="StateLength"/> doubles.</returns>
    /// <exception cref="ArgumentException">A length does not match, a value is not finite, or the scale is not positive.</exception>
    public unsafe double[] KeyState(ReadOnlySpan<float> keys, ReadOnlySpan<float> values, double keyScale, int maxDegreeOfParallelism = 0)
    {
        int n = keys.Length / HeadDim;
        Validate.Length(keys.Length, (long)n * HeadDim, nameof(keys), "[n, d]", Dimensions);
        Validate.Length(values.Length, (long)n * ValueDim, nameof(values), "[n, dv]", Dimensions);
        CheckScale(keyScale, nameof(keyScale));
        const string Why = "The polynomial method needs finite inputs.";
        FiniteCheck.Require(keys, nameof(keys), HeadDim, Why);
        FiniteCheck.Require(values, nameof(values), ValueDim, Why);
        double[] state = new double[StateLength];
        fixed (float* k = keys, v = values)
        fixed (double* s = state)
        {
            FactorisedAttention.KeyStateOf(k, v, n, ValueDim, _map, keyScale, maxDegreeOfParallelism, s);
        }

        return state;
    }

    /// <summary>
    /// Outputs of one head's queries from a key state (the sum of the states of every key they attend to): each row is
    /// <c>(f(q) W M)[0..dv) / (f(q) W M)[dv]</c>, zeros where the normaliser is 0.
    /// </summary>
    /// <param name="queries">Q, <c>[nq, d]</c>, finite (nq may be 0).</param>
    /// <param name="state">The summed key state, <see cref="StateLength"/> doubles (for tensor attention the entrywise product of the per-matrix sums).</param>
    /// <param name="queryScale">s_q (<see cref="InputScale"/> of max |Q| over every query).</param>
    /// <param name="keyScale">The key scale the states were formed at (for tensor attention the product of the matrices' scales).</param>
    /// <param name="destination">Output, <c>[nq, dv]</c>.</param>
    /// <param name="maxDegreeOfParallelism">Threads; the bits do not depend on it.</param>
    /// <exception cref="ArgumentException">A length does not match, a value is not finite, a scale is not positive, or the buffers overlap.</exception>
    public unsafe void ApplyToQueries(ReadOnlySpan<float> queries, ReadOnlySpan<double> state, double queryScale, double keyScale, Span<float> destination, int maxDegreeOfParallelism = 0)
    {
        int nq = queries.Length / HeadDim;
        Validate.Length(queries.Length, (long)nq * HeadDim, nameof(queries), "[nq, d]", Dimensions);
        Validate.Length(state.Length, StateLength, nameof(state), "[StateLength]", Dimensions);
        Validate.Length(destination.Length, (long)nq * ValueDim, nameof(destination), "[nq, dv]", Dimensions);
        Validate.NoOverlap(destination, queries, nameof(queries), nameof(destination));
        CheckScale(queryScale, nameof(queryScale));
        CheckScale(keyScale, nameof(keyScale));
        FiniteCheck.Require(queries, nameof(queries), HeadDim, "The polynomial method needs finite inputs.");
        fixed (float* q = queries, o = destination)
        fixed (double* s = state)
        {
            FactorisedAttention.QueriesOf(q, nq, ValueDim, _map, _weights, queryScale, keyScale, maxDegreeOfParallelism, s, o);
        }
    }

    /// <summary>
    /// The certificate <see cref="PolynomialAttention.Compute"/> returns for a non-causal run of this shape, with the rounding
    /// bound's summation depth grown by the additions that merged <paramref name="mergedStates"/> states per head.
    /// </summary>
    /// <param name="shape">The whole problem (every shard's keys and queries).</param>
    /// <param name="maxAbsValue">max |V| over every value.</param>
    /// <param name="mergedStates">How many key states were added per head (1: one call).</param>
    /// <returns>The certificate.</returns>
    public PolynomialCertificate Certificate(AttentionShape shape, double maxAbsValue, int mergedStates = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(mergedStates, 1);
        long depth = FactorisedAttention.SummationDepth(shape.KeyCount, _map.Count, false) + (2L * _polynomial.Degree) + HeadDim + 8 + (mergedStates - 1);
        return PolynomialAttention.Certificate(_polynomial, Range, _map.Count, depth, maxAbsValue, PolynomialAttention.PredictedFlops(shape, _map.Count));
    }

    /// <summary>
    /// The certificate <see cref="TensorAttention.ComputePolynomial"/> returns for a non-causal run of this shape, the depth
    /// grown by the merges as in <see cref="Certificate"/>.
    /// </summary>
    /// <param name="shape">The whole problem.</param>
    /// <param name="maxAbsValue">prod_t max |V_t| over every value of each matrix.</param>
    /// <param name="mergedStates">How many key states were added per head and matrix.</param>
    /// <returns>The certificate.</returns>
    public PolynomialCertificate TensorCertificate(TensorAttentionShape shape, double maxAbsValue, int mergedStates = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(mergedStates, 1);
        return TensorAttention.PolynomialCertificateOf(_polynomial, _map, Range, shape, maxAbsValue, causal: false, mergedStates - 1);
    }

    private string Dimensions => $"d {HeadDim}, dv {ValueDim}, r {FeatureCount}";

    private static void CheckScale(double scale, string parameter)
    {
        if (!(scale > 0 && double.IsFinite(scale)))
        {
            throw new ArgumentOutOfRangeException(parameter, scale, "An input scale must be positive and finite (see InputScale).");
        }
    }
}
