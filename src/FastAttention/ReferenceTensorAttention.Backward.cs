namespace FastAttention;

/// <summary>The float64 oracle of tensor attention's backward pass (docs/algorithms.md §3.3), any order.</summary>
public static partial class ReferenceTensorAttention
{
    /// <summary>
    /// The gradients of order-k tensor attention in double, every tuple enumerated: with
    /// <c>P = softmax(S)</c>, <c>dP = &lt;dO_i, v1 o ... o v(k-1)&gt;</c>, <c>D_i = sum P dP</c> and <c>dS = P (dP - D_i)</c>,
    /// <c>dq_i = s sum dS (k1 o ... )</c>, <c>dk_t = s sum dS (q_i o prod_(u != t) k_u)</c> and <c>dv_t = sum P (dO_i o prod_(u != t) v_u)</c>.
    /// Works from the inputs alone (it recomputes the softmax, so it needs neither the output nor the log-sum-exp).
    /// O(nq nk^(k-1) k (d + dv)) time, O(nk^(k-1)) memory per query; for tests and small n.
    /// </summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[h, nq, dv]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, <c>[h, nq, d]</c>, written.</param>
    /// <param name="keyGradients">dK1 .. dK(k-1), each <c>[h, nk, d]</c>, written.</param>
    /// <param name="valueGradients">dV1 .. dV(k-1), each <c>[h, nk, dv]</c>, written.</param>
    /// <param name="options">Scale, causal, windows (threads are ignored).</param>
    /// <exception cref="ArgumentException">An input or destination is invalid, or <paramref name="outputGradient"/> is not finite.</exception>
    public static void Backward(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values, ReadOnlySpan<float> outputGradient,
        TensorAttentionShape shape, Span<double> queryGradient, IReadOnlyList<Memory<double>> keyGradients, IReadOnlyList<Memory<double>> valueGradients, TensorAttentionOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(keyGradients);
        ArgumentNullException.ThrowIfNull(valueGradients);
        TensorAttention.CheckInputs(query, keys, values, shape);
        Validate.Length(outputGradient.Length, shape.OutputLength, nameof(outputGradient), "[h, nq, dv]", shape);
        Validate.Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), "[h, nq, d]", shape);
        if (keyGradients.Count != shape.KeyMatrices || valueGradients.Count != shape.KeyMatrices)
        {
            Validate.Fail(nameof(keyGradients), $"order {shape.Order} takes {shape.KeyMatrices} key and {shape.KeyMatrices} value gradients", $"{keyGradients.Count} and {valueGradients.Count}",
                $"{shape.KeyMatrices} of each", "pass one gradient per key and value matrix");
        }

        for (int t = 0; t < shape.KeyMatrices; t++)
        {
            Validate.Length(keyGradients[t].Length, shape.KeyLength, nameof(keyGradients), "[h, nk, d]", shape);
            Validate.Length(valueGradients[t].Length, shape.ValueLength, nameof(valueGradients), "[h, nk, dv]", shape);
        }

        TensorAttention.CheckWindowsAndFinite(query, keys, values, shape, options);
        FiniteCheck.Require(outputGradient, nameof(outputGradient), shape.ValueDim, "The backward pass needs a finite output gradient.");

        int d = shape.HeadDim, dv = shape.ValueDim, m = shape.KeyMatrices, nk = shape.KeyCount;
        double s = options.Scale ?? (1.0 / d);
        queryGradient.Clear();
        foreach (Memory<double> g in keyGradients.Concat(valueGradients))
        {
            g.Span.Clear();
        }

        int[] lo = new int[m], hi = new int[m];
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

                if (empty)
                {
                    continue; // no visible tuple: the output is a constant 0, the gradient 0
                }

                long qRow = ((long)h * shape.QueryCount) + i;
                ReadOnlySpan<float> q = query.Slice((int)(qRow * d), d);
                ReadOnlySpan<float> dO = outputGradient.Slice((int)(qRow * dv), dv);
                List<int[]> tuples = Tuples(lo, hi);
                double[] scores = new double[tuples.Count], dP = new double[tuples.Count];

                // Pass 1: the scores and dP_tuple = dO_i . (v1 o ... o v(k-1)).
                for (int x = 0; x < tuples.Count; x++)
                {
                    double score = 0;
                    for (int l = 0; l < d; l++)
                    {
                        score += q[l] * Product(keys, h, nk, d, tuples[x], l, -1);
                    }

                    scores[x] = s * score;
                    for (int c = 0; c < dv; c++)
                    {
                        dP[x] += dO[c] * Product(values, h, nk, dv, tuples[x], c, -1);
                    }
                }

                // Pass 2: P by log-sum-exp, D_i = sum P dP.
                double max = scores.Max(), total = scores.Sum(x => Math.Exp(x - max)), dot = 0;
                double[] p = [.. scores.Select(x => Math.Exp(x - max) / total)];
                for (int x = 0; x < tuples.Count; x++)
                {
                    dot += p[x] * dP[x];
                }

                // Pass 3: every gradient, by the product rule.
                Span<double> dq = queryGradient.Slice((int)(qRow * d), d);
                for (int x = 0; x < tuples.Count; x++)
                {
                    double dS = p[x] * (dP[x] - dot);
                    for (int l = 0; l < d; l++)
                    {
                        dq[l] += s * dS * Product(keys, h, nk, d, tuples[x], l, -1);
                    }

                    for (int t = 0; t < m; t++)
                    {
                        Span<double> dk = keyGradients[t].Span.Slice((int)((((long)h * nk) + tuples[x][t]) * d), d);
                        Span<double> dvt = valueGradients[t].Span.Slice((int)((((long)h * nk) + tuples[x][t]) * dv), dv);
                        for (int l = 0; l < d; l++)
                        {
                            dk[l] += s * dS * q[l] * Product(keys, h, nk, d, tuples[x], l, t);
                        }

                        for (int c = 0; c < dv; c++)
                        {
                            dvt[c] += p[x] * dO[c] * Product(values, h, nk, dv, tuples[x], c, t);
                        }
                    }
                }
            }
        }
    }

    /// <summary>Column <paramref name="l"/> of the product of the matrices' rows <paramref name="index"/>, leaving out matrix <paramref name="skip"/> (-1: none).</summary>
    private static double Product(IReadOnlyList<ReadOnlyMemory<float>> matrices, int h, int nk, int width, int[] index, int l, int skip)
    {
        double product = 1;
        for (int t = 0; t < matrices.Count; t++)
        {
            product *= t == skip ? 1.0 : matrices[t].Span[(int)((((long)h * nk) + index[t]) * width) + l];
        }

        return product;
    }

    /// <summary>Every tuple of the box [lo, hi], the last index fastest.</summary>
    private static List<int[]> Tuples(int[] lo, int[] hi)
    {
        var result = new List<int[]>();
        int[] index = [.. lo];
        while (true)
        {
            result.Add([.. index]);
            int next = index.Length - 1;
            while (next >= 0 && index[next] == hi[next])
            {
                index[next] = lo[next];
                next--;
            }

            if (next < 0)
            {
                return result;
            }

            index[next]++;
        }
    }
}
