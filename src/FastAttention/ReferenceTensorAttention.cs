namespace FastAttention;

/// <summary>The float64 oracle for tensor attention of any order: every tuple, log-sum-exp in double. O(nq nk^(k-1) d); for tests and small n.</summary>
public static partial class ReferenceTensorAttention
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
        TensorAttention.Check(query, keys, values, shape, destination, options);
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
