using FastAttention.Polynomial;

namespace FastAttention;

/// <summary>The polynomial method's backward (docs/algorithms.md §2.8).</summary>
public static partial class PolynomialAttention
{
    /// <summary>
    /// The gradients of the polynomial attention <see cref="Compute"/> computes with the same <paramref name="options"/>
    /// (the same R, degree and features, chosen by the same code from the same inputs, then held fixed: the choice, a
    /// discrete decision, carries no gradient): given
    /// <c>dO = dL/d output</c>, writes dL/dQ, dL/dK, dL/dV. Linear in n, in double on the factorised engine:
    /// <c>dN = dO / z</c>, <c>dz = -(dO . O) / z</c>, <c>dU1 = dN KV^T + dz Ks^T</c>, <c>dKV = U1^T dN</c>,
    /// <c>dKs = U1^T dz</c>, <c>dU2 = V dKV^T + 1 dKs^T</c>, <c>dV = U2 dKV</c>, then back through the monomial
    /// features; causal turns the forward's prefix states into suffix sums. Grouped-query heads: a kv head's dK, dV sum
    /// over its query heads. The bits do not depend on the thread count. A row whose normaliser is 0 (output 0) has zero gradient.
    /// </summary>
    /// <param name="query">Queries, <c>[batch, heads, nq, d]</c>.</param>
    /// <param name="key">Keys, <c>[batch, kvHeads, nk, d]</c>.</param>
    /// <param name="value">Values, <c>[batch, kvHeads, nk, dv]</c>.</param>
    /// <param name="output">The forward's output for these inputs and options, <c>[batch, heads, nq, dv]</c>.</param>
    /// <param name="outputGradient">dL/d output, <c>[batch, heads, nq, dv]</c>; must be finite.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dL/dQ, <c>[batch, heads, nq, d]</c>, written.</param>
    /// <param name="keyGradient">dL/dK, <c>[batch, kvHeads, nk, d]</c>, written.</param>
    /// <param name="valueGradient">dL/dV, <c>[batch, kvHeads, nk, dv]</c>, written.</param>
    /// <param name="options">The forward's options.</param>
    /// <returns>The forward's certificate (R, g, r, eps, bound) of the attention this is the gradient of.</returns>
    /// <exception cref="ArgumentException">Lengths, shape, overlapping buffers, or non-finite inputs or output gradient.</exception>
    /// <exception cref="ArgumentOutOfRangeException">As <see cref="Compute"/>: R too wide for the target error, or r over the budget.</exception>
    public static PolynomialCertificate Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient,
        PolynomialAttentionOptions options = default)
    {
        CheckBackward(query, key, value, output, outputGradient, shape, queryGradient, keyGradient, valueGradient);

        int d = shape.HeadDim;
        double s = options.Scale ?? (1.0 / Math.Sqrt(d));
        double range = RangeBound(query, key, d, s);
        (ExpPolynomial polynomial, MonomialFeatureMap map) = Prepare(range, s, d, options);
        double maxAbsValue = RunFactorisedBackward(query, key, value, output, outputGradient, shape, queryGradient, keyGradient, valueGradient,
            map, map.Weights(), options.Causal, options.MaxDegreeOfParallelism);
        long depth = FactorisedAttention.SummationDepth(shape.KeyCount, map.Count, options.Causal) + (2L * polynomial.Degree) + d + 8;
        return Certificate(polynomial, range, map.Count, depth, maxAbsValue, PredictedFlops(shape, map.Count));
    }

    /// <summary>
    /// The backward's checks, in the fixed order: shape; the lengths of the five inputs and three gradients; no gradient
    /// sharing memory with an input or another gradient; then finite query, key, value, output and output gradient.
    /// </summary>
    internal static void CheckBackward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient)
    {
        Validate.Shape(shape);
        Validate.Length(query.Length, shape.QueryLength, nameof(query), Validate.QueryLayout, shape);
        Validate.Length(key.Length, shape.KeyLength, nameof(key), Validate.KeyLayout, shape);
        Validate.Length(value.Length, shape.ValueLength, nameof(value), Validate.ValueLayout, shape);
        Validate.Length(output.Length, shape.OutputLength, nameof(output), Validate.OutputLayout, shape);
        Validate.Length(outputGradient.Length, shape.OutputLength, nameof(outputGradient), Validate.OutputLayout, shape);
        Validate.Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), Validate.QueryLayout, shape);
        Validate.Length(keyGradient.Length, shape.KeyLength, nameof(keyGradient), Validate.KeyLayout, shape);
        Validate.Length(valueGradient.Length, shape.ValueLength, nameof(valueGradient), Validate.ValueLayout, shape);
        NoOverlap(queryGradient, nameof(queryGradient), query, key, value, output, outputGradient);
        NoOverlap(keyGradient, nameof(keyGradient), query, key, value, output, outputGradient);
        NoOverlap(valueGradient, nameof(valueGradient), query, key, value, output, outputGradient);
        Validate.NoOverlap(keyGradient, queryGradient, nameof(queryGradient), nameof(keyGradient));
        Validate.NoOverlap(valueGradient, queryGradient, nameof(queryGradient), nameof(valueGradient));
        Validate.NoOverlap(valueGradient, keyGradient, nameof(keyGradient), nameof(valueGradient));

        const string Why = "The approximate methods need finite inputs (their score bound R would be infinite); only exact attention can let non-finite values propagate.";
        FiniteCheck.Require(query, nameof(query), shape.HeadDim, Why);
        FiniteCheck.Require(key, nameof(key), shape.HeadDim, Why);
        FiniteCheck.Require(value, nameof(value), shape.ValueDim, Why);
        FiniteCheck.Require(output, nameof(output), shape.ValueDim, "The backward needs the forward's (finite) output for these inputs.");
        FiniteCheck.Require(outputGradient, nameof(outputGradient), shape.ValueDim,
            "The approximate methods reject non-finite values, as their forward does: a finite output gradient is needed.");
    }

    /// <summary>
    /// About r (nq (4 c + 7) + nk (6 c + 6)) flops per head for the backward, c = dv + 1: the key state again (2 r c nk),
    /// per query the features, z, dF = Mw G, F G^T and the features' reverse mode (r (1 + 2 + 4 c + 4)), per key the features,
    /// dF = dM [v | 1], dV and the reverse mode (r (1 + 4 c + 4)). The causal diagonal blocks are not counted. The same count serves the
    /// sketch (<see cref="SketchedAttention.Backward"/>) with its feature count.
    /// </summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="rank">The feature count r (<see cref="PolynomialCertificate.Rank"/>, <see cref="SketchReport.Rank"/>).</param>
    /// <returns>The predicted flops of one backward.</returns>
    public static double PredictedBackwardFlops(AttentionShape shape, long rank)
    {
        double c = shape.ValueDim + 1;
        double queries = (double)shape.QueryCount * shape.HeadCount, keys = (double)shape.KeyCount * shape.EffectiveKeyValueHeads;
        return rank * ((queries * ((4 * c) + 7)) + (keys * ((6 * c) + 6))) * shape.BatchSize;
    }

    /// <summary>Runs the factorised backward on spans; returns max |V| (for the certificate).</summary>
    internal static unsafe double RunFactorisedBackward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output,
        ReadOnlySpan<float> outputGradient, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient,
        FeatureMap map, double[] weight, bool causal, int maxDegree)
    {
        fixed (float* q = query, k = key, v = value, o = output, dO = outputGradient, dq = queryGradient, dk = keyGradient, dv = valueGradient)
        {
            FactorisedAttention.RunBackward(new FactorisedAttention.GradientProblem
            {
                Forward = new FactorisedAttention.Problem
                {
                    Query = q, Key = k, Value = v, Output = o, Shape = shape, Map = map, Weight = weight, Causal = causal, MaxDegreeOfParallelism = maxDegree,
                },
                OutputGradient = dO, QueryGradient = dq, KeyGradient = dk, ValueGradient = dv,
            });
        }

        return Math.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(value));
    }

    private static void NoOverlap(Span<float> gradient, string name, ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value,
        ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient)
    {
        Validate.NoOverlap(gradient, query, nameof(query), name);
        Validate.NoOverlap(gradient, key, nameof(key), name);
        Validate.NoOverlap(gradient, value, nameof(value), name);
        Validate.NoOverlap(gradient, output, nameof(output), name);
        Validate.NoOverlap(gradient, outputGradient, nameof(outputGradient), name);
    }
}
