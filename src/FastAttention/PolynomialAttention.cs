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
/// <param name="OutputBound">2 eps / (1 - eps) max|V| + <paramref name="RoundingBound"/>: every output entry, as returned in float32, is within this of exact attention.</param>
/// <param name="RoundingBound">The part of <paramref name="OutputBound"/> that covers floating point: the engine's double-precision sums (a rigorous worst case) and rounding the output to float32.</param>
public sealed record PolynomialCertificate(double Range, int Degree, long Rank, double PredictedFlops, double PolynomialRelativeError, double OutputBound, double RoundingBound);

/// <summary>
/// Polynomial-method attention (Alman and Song, "Fast Attention Requires Bounded Entries"; docs/algorithms.md
/// §2): e^x is replaced by a polynomial P with relative error eps on [-R, R], P(s q.k) is factorised as
/// U1(q) . U2(k) with r = C(d + g, g) monomial features, and
/// <c>out = diag(U1 (U2^T 1))^-1 U1 (U2^T V)</c> costs O(n r dv) instead of O(n^2 d).
/// The features and both products run in double on the factorised engine (vectorised, GEMM-shaped,
/// parallel, bitwise independent of the thread count); causal is blockwise: prefix states across key
/// blocks, the diagonal block weighted directly.
/// </summary>
public static partial class PolynomialAttention
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

        int d = shape.HeadDim;
        double s = options.Scale ?? (1.0 / Math.Sqrt(d));
        double range = RangeBound(query, key, d, s);
        (ExpPolynomial polynomial, MonomialFeatureMap map) = Prepare(range, s, d, options);
        double maxAbsValue = RunFactorised(query, key, value, shape, destination, map, map.Weights(), options.Causal, options.MaxDegreeOfParallelism);
        long depth = FactorisedAttention.SummationDepth(shape.KeyCount, map.Count, options.Causal) + (2L * polynomial.Degree) + d + 8;
        return Certificate(polynomial, range, map.Count, depth, maxAbsValue, PredictedFlops(shape, map.Count));
    }

    /// <summary>The polynomial for R (fitted to eps, or of the forced degree) and its monomial features; refuses a relative error &gt;= 1 or r over the budget.</summary>
    internal static (ExpPolynomial Polynomial, MonomialFeatureMap Map) Prepare(double range, double scale, int d, PolynomialAttentionOptions options)
    {
        double eps = options.RelativeError ?? 1e-3;
        ExpPolynomial polynomial = options.Degree is int g
            ? ExpPolynomial.OfDegree(range, g, options.Method)
            : ExpPolynomial.Fit(range, eps, options.Method);
        if (polynomial.RelativeError >= 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), polynomial.Degree,
                $"Degree {polynomial.Degree} has relative error {NumberText.Format(polynomial.RelativeError)} >= 1 on [-{NumberText.Format(range, 4)}, {NumberText.Format(range, 4)}]: weights could turn negative.");
        }

        var monomials = new MonomialFeatures(d, polynomial.Degree, options.MaxRank > 0 ? options.MaxRank : DefaultMaxRank);
        return (polynomial, new MonomialFeatureMap(monomials, polynomial.Coefficients, scale));
    }

    /// <summary>The certificate of a run: eps's bound 2 eps / (1 - eps) max|V| plus the rounding bound for a summation depth.</summary>
    internal static PolynomialCertificate Certificate(ExpPolynomial polynomial, double range, long rank, long depth, double maxAbsValue, double flops)
    {
        double e = polynomial.RelativeError;
        double rounding = RoundingBound(polynomial, range, e, depth) * maxAbsValue;
        return new PolynomialCertificate(range, polynomial.Degree, rank, flops, e, (2 * e / (1 - e) * maxAbsValue) + rounding, rounding);
    }

    /// <summary>
    /// R = |s| max||q|| max||k|| (times 1 + 1e-12, covering the rounding of the norms, which are summed in
    /// double), a proven bound on every |s q_i.k_j| by Cauchy–Schwarz, in O(n d): the exact maximum would
    /// cost the O(n^2 d) the method avoids. At least 1e-12.
    /// </summary>
    /// <param name="query">Query rows.</param>
    /// <param name="key">Key rows.</param>
    /// <param name="headDim">d, the row length.</param>
    /// <param name="scale">s.</param>
    /// <returns>R.</returns>
    public static double RangeBound(ReadOnlySpan<float> query, ReadOnlySpan<float> key, int headDim, double scale) =>
        PolynomialFactors.RangeOf(scale, InputAnalysis.MaxRowNorm(query, headDim), InputAnalysis.MaxRowNorm(key, headDim));

    /// <summary>The feature count <c>r = C(d + g, g)</c> of the monomials of degree at most <paramref name="degree"/> in <paramref name="headDim"/> variables (saturates at <see cref="long.MaxValue"/>).</summary>
    /// <param name="headDim">d.</param>
    /// <param name="degree">g, at least 0.</param>
    /// <returns>r.</returns>
    public static long FeatureCount(int headDim, int degree) => MonomialFeatures.Rank(headDim, degree);

    /// <summary>
    /// The smallest polynomial degree reaching relative error <paramref name="relativeError"/> for e^x on [-R, R]
    /// (R = <paramref name="range"/>, at least 1e-12) and its feature count <c>r = C(d + g, g)</c>; null when no
    /// polynomial of degree at most <see cref="ExpPolynomial.MaxDegree"/> reaches it. What the method would need,
    /// before any budget: the planner, <c>fastattn inspect</c> and <c>fastattn tensor</c> all ask this one question.
    /// </summary>
    /// <param name="range">R, the bound on every |s q.k| (see <see cref="RangeBound"/>).</param>
    /// <param name="headDim">d.</param>
    /// <param name="relativeError">The target relative error of the polynomial on [-R, R].</param>
    /// <returns>The degree and feature count, or null when no polynomial reaches the error.</returns>
    public static (int Degree, long Rank)? Size(double range, int headDim, double relativeError)
    {
        try
        {
            int degree = ExpPolynomial.Fit(Math.Max(range, 1e-12), relativeError).Degree;
            return (degree, MonomialFeatures.Rank(headDim, degree));
        }
        catch (ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>
    /// About 2 r (nq (dv + 1) + nk (dv + 1)) flops for the two products plus r nq + r nk for the features,
    /// per head (keys once per kv head).
    /// </summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="rank">r, the feature count.</param>
    /// <returns>The predicted flop count.</returns>
    public static double PredictedFlops(AttentionShape shape, long rank) =>
        (double)rank * ((((double)shape.QueryCount * shape.HeadCount) + ((double)shape.KeyCount * shape.EffectiveKeyValueHeads)) * ((2.0 * (shape.ValueDim + 1)) + 1)) * shape.BatchSize;

    /// <summary>
    /// A rigorous bound on what floating point adds to the error, per unit of max|V|. Every weight
    /// the engine forms is sum_a W_a f_a(q) f_a(k) by at most <paramref name="depth"/> rounded operations
    /// in double, so its error is at most gamma_depth C with C = sum_t |c_t| R^t, while the exact weight
    /// is at least (1 - eps) e^-R; numerator and normaliser together give
    /// 2 gamma C e^R / ((1 - eps) - gamma C e^R), plus 2^-24 for rounding the output to float32.
    /// </summary>
    private static double RoundingBound(ExpPolynomial polynomial, double range, double eps, long depth)
    {
        const double Unit = 1.1102230246251565e-16;
        double gamma = depth * Unit / (1 - (depth * Unit));
        double magnitude = 0;
        for (int t = polynomial.Coefficients.Count - 1; t >= 0; t--)
        {
            magnitude = (magnitude * range) + Math.Abs(polynomial.Coefficients[t]);
        }

        double relative = gamma * magnitude * Math.Exp(range);
        double floatOutput = 5.960464477539063e-8;
        return relative < (1 - eps) / 2 ? (2 * relative / ((1 - eps) - relative)) + floatOutput : double.PositiveInfinity;
    }

    /// <summary>
    /// Power attention with an even integer exponent p, exactly and in linear time: <c>(s q.k)^p =
    /// sum over |alpha| = p of (p!/alpha!) (s q)^alpha (s k)^alpha</c>, so the symmetric tensor features of
    /// degree p factorise the weights with no approximation (docs/algorithms.md §2, "exact special case").
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
        CheckInputs(query, key, value, shape, destination);
        if (power < 2 || power % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(power), power, "The exponent must be an even integer >= 2 (odd or fractional powers of |q.k| have no finite exact factorisation).");
        }

        var monomials = new MonomialFeatures(shape.HeadDim, power, maxRank > 0 ? maxRank : DefaultMaxRank);
        double[] polynomial = new double[power + 1];
        polynomial[power] = 1; // (s q.k)^p: only the monomials of degree exactly p carry weight
        var map = new MonomialFeatureMap(monomials, polynomial, scale);
        RunFactorised(query, key, value, shape, destination, map, map.Weights(), causal, 0);
        return monomials.Count;
    }

    /// <summary>Runs the factorised engine on spans (products of the given width, or the widest this CPU accelerates); returns max |V|.</summary>
    internal static unsafe double RunFactorised(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination,
        FeatureMap map, double[] weight, bool causal, int maxDegree, FactorisedKernel? products = null)
    {
        fixed (float* q = query, k = key, v = value, o = destination)
        {
            FactorisedAttention.Run(new FactorisedAttention.Problem
            {
                Query = q, Key = k, Value = v, Output = o, Shape = shape, Map = map, Weight = weight, Causal = causal, MaxDegreeOfParallelism = maxDegree, Products = products,
            });
        }

        return Math.Abs(TensorPrimitives.MaxMagnitude(value));
    }

    internal static void CheckInputs(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination)
    {
            Validate.Attention(query, key, value, shape, destination);
            const string Why = "The approximate methods need finite inputs (their score bound R would be infinite); only exact attention can let non-finite values propagate.";
            FiniteCheck.Require(query, nameof(query), shape.HeadDim, Why);
            FiniteCheck.Require(key, nameof(key), shape.HeadDim, Why);
            FiniteCheck.Require(value, nameof(value), shape.ValueDim, Why);
    }
}
