using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>Tensor attention of order k on the factorised engine (docs/algorithms.md §3): the per-key-matrix states multiplied together.</summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>
    /// Tensor attention of order k (docs/algorithms.md §3) with the same features: the Khatri–Rao identity turns
    /// <c>(U2 (.) U3)^T ([V1 | 1] (.) [V2 | 1])</c> into the Hadamard product of the per-matrix states
    /// <c>U_t^T [V_t | 1]</c>, so <c>out = diag(w)^-1 U1 (o_t U_t^T [V_t | 1])</c> costs O(n r dv) per key
    /// matrix and never n^2. The last column of the product is the normaliser
    /// <c>U1 (o_t U_t^T 1)</c>. Causal (every <c>j_t &lt;= i + nk - nq</c>) keeps a running state per key
    /// matrix, updated key by key and multiplied per query (sequential within a head; heads in parallel).
    /// </summary>
    /// <param name="query">Q, [h, nq, d].</param>
    /// <param name="keys">K_t, each [h, nk, d].</param>
    /// <param name="values">V_t, each [h, nk, dv].</param>
    /// <param name="output">Output, [h, nq, dv].</param>
    /// <param name="shape">h as heads, nq, nk, d, dv.</param>
    /// <param name="map">The features; its degrees count the total degree in q (and in each k_t).</param>
    /// <param name="weightOfFeature">W_a for unscaled inputs.</param>
    /// <param name="causal">Causal.</param>
    /// <param name="maxDegree">Threads.</param>
    /// <param name="products">The width of the products; null picks the widest this CPU accelerates.</param>
    public static void RunTensor(float* query, nint[] keys, nint[] values, float* output, AttentionShape shape, FeatureMap map, double[] weightOfFeature, bool causal, int maxDegree, FactorisedKernel? products = null)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount;
        int rPad = map.PaddedCount;
        (int cPad, int wave) = Layout(map, dv, maxDegree);
        double qScale = InverseMaxAbs(query, shape.QueryLength);
        double[] kScale = [.. keys.Select(k => InverseMaxAbs((float*)k, shape.KeyLength))];
        double combined = qScale * kScale.Aggregate(1.0, (x, y) => x * y);
        double[] weight = new double[rPad];
        for (int a = 0; a < map.Count; a++)
        {
            weight[a] = weightOfFeature[a] / Math.Pow(combined, map.Degree[a]);
        }

        long stateDoubles = (long)rPad * cPad;
        Func<Scratch> scratch = () => new Scratch(map, cPad);
        var problem = new Problem { Query = query, Output = output, Shape = shape, Map = map, Weight = weight, MaxDegreeOfParallelism = maxDegree, Products = products };
        Head Stream(int t, int h) => new(problem, map, weight, qScale, kScale[t], cPad,
            (float*)keys[t] + ((long)h * nk * d), (float*)values[t] + ((long)h * nk * dv), h, 1);

        if (causal)
        {
            ParallelWork.Run(shape.HeadCount, maxDegree, () => new TensorScratch(map, cPad, keys.Length), (h, s) =>
                RunTensorCausal([.. Enumerable.Range(0, keys.Length).Select(t => Stream(t, h))], weight, s));
            return;
        }

        using var product = new DoubleBuffer(stateDoubles);
        using var state = new DoubleBuffer(stateDoubles);
        for (int h = 0; h < shape.HeadCount; h++)
        {
            for (int t = 0; t < keys.Length; t++)
            {
                KeyState(Stream(t, h), wave, scratch, t == 0 ? product.Pointer : state.Pointer);
                if (t > 0)
                {
                    Multiply(product.Pointer, state.Pointer, stateDoubles);
                }
            }

            Head first = Stream(0, h);
            first.ApplyWeight(product.Pointer);
            QueryPass(first, product.Pointer, scratch);
        }
    }

    /// <summary>One head of causal tensor attention: keys join every stream's state in order; each query multiplies the states.</summary>
    private static void RunTensorCausal(Head[] streams, double[] weight, TensorScratch s)
    {
        Head first = streams[0];
        FeatureMap map = first.Map;
        int nq = first.QueryCount, nk = first.KeyCount, dv = first.ValueDim, cPad = first.Columns, rPad = map.PaddedCount;
        long offset = (long)nk - nq;
        foreach (double[] state in s.States)
        {
            Array.Clear(state);
        }

        int joined = 0, keyBlock = -1;
        double[] acc = new double[dv + 1];
        for (int i0 = 0; i0 < nq; i0 += Block)
        {
            int count = Math.Min(Block, nq - i0);
            first.QueryFeatures(first.FirstHead, i0, count, s.Query);
            for (int x = 0; x < count; x++)
            {
                int visible = (int)Math.Clamp(i0 + x + offset + 1, 0, nk);
                for (; joined < visible; joined++)
                {
                    if (joined / Block != keyBlock)
                    {
                        keyBlock = joined / Block;
                        for (int t = 0; t < streams.Length; t++)
                        {
                            streams[t].KeyFeatures(keyBlock * Block, Math.Min(Block, nk - (keyBlock * Block)), s.Keys[t]);
                        }
                    }

                    for (int t = 0; t < streams.Length; t++)
                    {
                        streams[t].AddKey(joined, joined - (keyBlock * Block), s.Keys[t].Features, s.States[t]);
                    }
                }

                float* row = first.Output(first.FirstHead, i0 + x);
                if (visible == 0)
                {
                    new Span<float>(row, dv).Clear();
                    continue;
                }

                Array.Clear(acc);
                double* f = s.Query.Features + x;
                for (int a = 0; a < rPad; a++)
                {
                    double coefficient = weight[a] * f[(long)a * Block];
                    if (coefficient == 0)
                    {
                        continue;
                    }

                    for (int c = 0; c <= dv; c++)
                    {
                        double product = coefficient;
                        foreach (double[] state in s.States)
                        {
                            product *= state[((long)a * cPad) + c];
                        }

                        acc[c] += product;
                    }
                }

                for (int c = 0; c < dv; c++)
                {
                    row[c] = acc[dv] == 0 ? 0f : (float)(acc[c] / acc[dv]);
                }
            }
        }
    }


    /// <summary>A causal tensor worker's buffers: query features, one key-feature block and one running state per key matrix.</summary>
    private sealed class TensorScratch : IDisposable
    {
        public TensorScratch(FeatureMap map, int columns, int streams)
        {
            Query = new Scratch(map, columns);
            Keys = [.. Enumerable.Range(0, streams).Select(_ => new Scratch(map, columns))];
            States = [.. Enumerable.Range(0, streams).Select(_ => new double[(long)map.PaddedCount * columns])];
        }

        public Scratch Query { get; }

        public Scratch[] Keys { get; }

        public double[][] States { get; }

        public void Dispose()
        {
            Query.Dispose();
            foreach (Scratch key in Keys)
            {
                key.Dispose();
            }
        }
    }

}
