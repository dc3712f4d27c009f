namespace FastAttention.Polynomial;

/// <summary>The non-causal factorised engine split at its mergeable key state (for <see cref="PolynomialFactors"/>).</summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>
    /// The unweighted key state <c>sum_j f(k_j s_k) [v_j | 1]^T</c> of one head's keys (<c>[PaddedCount][RoundUp(dv + 1)]</c>),
    /// summed exactly as the one-call non-causal pass sums it (fixed chunks in parallel, added in chunk order).
    /// </summary>
    public static void KeyStateOf(float* key, float* value, int keyCount, int valueDim, FeatureMap map, double keyScale, int maxDegree, double* state)
    {
        var shape = new AttentionShape(1, 1, 0, keyCount, map.Dimension, valueDim);
        (int columns, int wave) = Layout(map, valueDim, maxDegree);
        var problem = new Problem { Key = key, Value = value, Shape = shape, Map = map, MaxDegreeOfParallelism = maxDegree };
        var head = new Head(problem, map, [], 1, keyScale, columns, key, value, 0, 1);
        KeyState(head, wave, () => new Scratch(map, columns), state);
    }

    /// <summary>
    /// Output rows of one query head from an unweighted key state: the state is weighted by
    /// <c>W_a / (s_q s_k)^deg(a)</c> and the query pass runs as in the one-call engine.
    /// </summary>
    public static void QueriesOf(float* query, int queryCount, int valueDim, FeatureMap map, double[] weightOfFeature, double queryScale, double keyScale, int maxDegree, double* state, float* output)
    {
        var shape = new AttentionShape(1, 1, queryCount, 0, map.Dimension, valueDim);
        (int columns, _) = Layout(map, valueDim, maxDegree);
        double[] weight = new double[map.PaddedCount];
        for (int a = 0; a < map.Count; a++)
        {
            weight[a] = weightOfFeature[a] / Math.Pow(queryScale * keyScale, map.Degree[a]);
        }

        var problem = new Problem { Query = query, Output = output, Shape = shape, Map = map, Weight = weight, MaxDegreeOfParallelism = maxDegree };
        var head = new Head(problem, map, weight, queryScale, keyScale, columns, null, null, 0, 1);
        using var weighted = new DoubleBuffer((long)map.PaddedCount * columns);
        new Span<double>(state, map.PaddedCount * columns).CopyTo(new Span<double>(weighted.Pointer, map.PaddedCount * columns));
        head.ApplyWeight(weighted.Pointer);
        QueryPass(head, weighted.Pointer, () => new Scratch(map, columns));
    }

    /// <summary>The state's padded column count and how many partial states the key pass holds at once: enough to keep the threads busy, within 64 MiB.</summary>
    public static (int Columns, int Wave) Layout(FeatureMap map, int valueDim, int maxDegree)
    {
        int columns = RoundUp(valueDim + 1, ColumnTile);
        int threads = maxDegree > 0 ? maxDegree : Environment.ProcessorCount;
        long stateDoubles = (long)map.PaddedCount * columns;
        return (columns, (int)Math.Clamp((64L << 20) / (stateDoubles * sizeof(double)), 1, 4 * threads));
    }

    /// <summary>1 / max|x| over a tensor (1 when every entry is 0): the input scale the engine forms features at.</summary>
    public static double InverseMaxAbs(ReadOnlySpan<float> x)
    {
        fixed (float* p = x)
        {
            return InverseMaxAbs(p, x.Length);
        }
    }
}
