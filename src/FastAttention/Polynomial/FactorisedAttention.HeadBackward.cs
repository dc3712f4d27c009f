using System.Numerics.Tensors;

namespace FastAttention.Polynomial;

/// <summary>The factorised backward's per-head work: one block of queries, one block of keys, the causal diagonal block.</summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>dO and dQ laid out as the output and the query (<c>[batch, heads, nq, *]</c>); dK and dV of one kv head.</summary>
    private readonly struct Gradients(float* outputGradient, float* queryGradient, float* keyGradient, float* valueGradient)
    {
        public float* OutputGradient { get; } = outputGradient;

        public float* QueryGradient { get; } = queryGradient;

        public float* KeyGradient { get; } = keyGradient;

        public float* ValueGradient { get; } = valueGradient;
    }

    private readonly partial struct Head
    {
        /// <summary>target[a][0] = weighted[a][dv], the normaliser column alone, padded to one column tile (z costs r, not r (dv + 1)).</summary>
        public void NormaliserColumn(double* weighted, double* target)
        {
            for (int a = 0; a < Map.PaddedCount; a++)
            {
                target[(long)a * ColumnTile] = weighted[((long)a * Columns) + ValueDim];
                target[((long)a * ColumnTile) + 1] = 0;
                target[((long)a * ColumnTile) + 2] = 0;
            }
        }

        /// <summary>
        /// dQ of query rows i0 .. i0+count of one head, from the weighted state Mw (<paramref name="weighted"/>) the forward
        /// used for them, and <c>stateGradient += F G^T</c> (dL/dMw). With <paramref name="diagonal"/> &gt;= 0 (causal) the
        /// visible keys of that key block enter directly, as in the forward, and their dK, dV go to the scratch.
        /// </summary>
        public void QueryBackward(in Gradients gradients, long head, int i0, int count, double* weighted, double* normaliser, int diagonal, BackwardScratch b, double* stateGradient)
        {
            int d = Map.Dimension, dv = ValueDim, rPad = Map.PaddedCount;
            Scratch s = b.Forward;
            float* query = _query + (((head * QueryCount) + i0) * d);

            // 1. Features F [r][Block] of the scaled queries, and z = F^T Mw[., dv] (plus the diagonal's weights).
            s.Evaluate(query, count, _qScale);
            double* z = b.Normaliser;
            _products.QueryProduct(s.Features, rPad, normaliser, ColumnTile, z);
            if (diagonal >= 0)
            {
                DiagonalWeights(query, i0, count, diagonal, b);
            }

            // 2. G = [dN | dz] transposed: dN_i = dO_i / z_i, dz_i = -(dO_i . O_i) / z_i (zero where the output is, z = 0).
            double* g = b.RowGradient;
            new Span<double>(g, Columns * Block).Clear();
            for (int x = 0; x < count; x++)
            {
                double zx = z[x];
                if (zx == 0)
                {
                    continue;
                }

                float* dO = gradients.OutputGradient + (((head * QueryCount) + i0 + x) * dv), o = Output(head, i0 + x);
                double dot = 0;
                for (int c = 0; c < dv; c++)
                {
                    dot += (double)dO[c] * o[c];
                    g[((long)c * Block) + x] = dO[c] / zx;
                }

                g[((long)dv * Block) + x] = -dot / zx;
            }

            // 3. dF = Mw G (the gradient of every feature), back through the features to the scaled inputs; dMw += F G^T.
            _products.ExpandProduct(weighted, rPad, g, Columns, b.Adjoint);
            Map.Backpropagate(s.Features, b.Adjoint, s.MapScratch, b.InputGradient);
            _products.KeyProduct(s.Features, rPad, g, Columns, stateGradient);

            double* direct = b.DirectQuery;
            new Span<double>(direct, count * d).Clear();
            if (diagonal >= 0)
            {
                DiagonalBackward(query, count, diagonal, b);
            }

            for (int x = 0; x < count; x++)
            {
                float* dq = gradients.QueryGradient + (((head * QueryCount) + i0 + x) * d);
                for (int l = 0; l < d; l++)
                {
                    dq[l] = (float)((_qScale * b.InputGradient[((long)l * Block) + x]) + direct[((long)x * d) + l]);
                }
            }
        }

        /// <summary>
        /// dK, dV of key rows j0 .. j0+count from dM = diag(W) dL/dMw (<paramref name="stateGradient"/>): <c>dF = dM [v_j | 1]</c>
        /// back through the features, <c>dv_j = dM^T f(k_j)</c>; plus the causal diagonal's direct part when given ([Block][d], [Block][dv]).
        /// </summary>
        public void KeyBackward(in Gradients gradients, int j0, int count, double* stateGradient, double* directKey, double* directValue, BackwardScratch b)
        {
            int d = Map.Dimension, dv = ValueDim, rPad = Map.PaddedCount;
            Scratch s = b.Forward;
            s.Evaluate(Key + ((long)j0 * d), count, _kScale);
            ValuesTransposed(j0, count, s.Values);
            _products.ExpandProduct(stateGradient, rPad, s.Values, Columns, b.Adjoint);
            double* vt = b.RowGradient;
            _products.QueryProduct(s.Features, rPad, stateGradient, Columns, vt);
            Map.Backpropagate(s.Features, b.Adjoint, s.MapScratch, b.InputGradient);
            for (int j = 0; j < count; j++)
            {
                float* dk = gradients.KeyGradient + ((long)(j0 + j) * d), dvj = gradients.ValueGradient + ((long)(j0 + j) * dv);
                for (int l = 0; l < d; l++)
                {
                    dk[l] = (float)((_kScale * b.InputGradient[((long)l * Block) + j]) + (directKey is null ? 0 : directKey[((long)j * d) + l]));
                }

                for (int c = 0; c < dv; c++)
                {
                    dvj[c] = (float)(vt[((long)c * Block) + j] + (directValue is null ? 0 : directValue[((long)j * dv) + c]));
                }
            }
        }

        /// <summary>The key embeddings' gradients of a diagonal block, summed over its queries and heads, back to the key rows: directKey [Block][d].</summary>
        public void DiagonalKeys(int diagonal, BackwardScratch b, double* directKey)
        {
            int d = Map.Dimension, e = Map.EmbeddingSize;
            int j0 = diagonal * Block, keys = Math.Min(KeyCount, j0 + Block) - j0;
            for (int j = 0; j < keys; j++)
            {
                Map.EmbeddingBackward(Key + ((long)(j0 + j) * d), b.KeyEmbeddingGradient + ((long)j * e), directKey + ((long)j * d));
            }
        }

        /// <summary>The forward's direct weights of the diagonal block for each query (kept with their derivatives), added to z.</summary>
        private void DiagonalWeights(float* query, int i0, int count, int diagonal, BackwardScratch b)
        {
            int d = Map.Dimension, e = Map.EmbeddingSize;
            Scratch s = b.Forward;
            int j0 = diagonal * Block, keys = DiagonalTransposed(diagonal, s);
            double* keyT = s.KeyEmbedding;
            long offset = (long)KeyCount - QueryCount;
            for (int x = 0; x < count; x++)
            {
                int visible = (int)Math.Clamp(i0 + x + offset + 1 - j0, 0, keys);
                b.Visible[x] = visible;
                double* qe = b.QueryEmbeddings + ((long)x * e);
                Map.Embed(query + ((long)x * d), qe);
                var w = new Span<double>(b.PairWeights + ((long)x * Block), visible);
                w.Clear();
                for (int l = 0; l < e; l++)
                {
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<double>(keyT + ((long)l * Block), visible), qe[l], w, w);
                }

                var derivative = new Span<double>(b.PairDerivatives + ((long)x * Block), visible);
                w.CopyTo(derivative);
                Map.DerivativesOfDots(derivative);
                Map.WeightsOfDots(w);
                b.Normaliser[x] += TensorPrimitives.Sum<double>(w);
            }
        }

        /// <summary>
        /// The diagonal block's direct pairs: <c>dw_ij = dN_i . v_j + dz_i</c>; <c>dv_j += w_ij dN_i</c>; the embeddings get
        /// <c>dw_ij w'(dot_ij)</c> times the other side's embedding (keys summed in the scratch, queries back to their rows now).
        /// </summary>
        private void DiagonalBackward(float* query, int count, int diagonal, BackwardScratch b)
        {
            int d = Map.Dimension, dv = ValueDim, e = Map.EmbeddingSize;
            Scratch s = b.Forward;
            double* keyT = s.KeyEmbedding, valueT = s.DiagonalValues, g = b.RowGradient;
            for (int x = 0; x < count; x++)
            {
                int visible = b.Visible[x];
                if (visible == 0)
                {
                    continue;
                }

                var t = new Span<double>(b.Dots, visible);
                t.Fill(g[((long)dv * Block) + x]);
                for (int c = 0; c < dv; c++)
                {
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<double>(valueT + ((long)c * Block), visible), g[((long)c * Block) + x], t, t);
                }

                double* w = b.PairWeights + ((long)x * Block);
                for (int j = 0; j < visible; j++)
                {
                    double* dvj = b.DirectValue + ((long)j * dv);
                    for (int c = 0; c < dv; c++)
                    {
                        dvj[c] += w[j] * g[((long)c * Block) + x];
                    }
                }

                TensorPrimitives.Multiply(t, new ReadOnlySpan<double>(b.PairDerivatives + ((long)x * Block), visible), t);
                double* qe = b.QueryEmbeddings + ((long)x * e), qg = s.QueryEmbedding;
                for (int l = 0; l < e; l++)
                {
                    qg[l] = TensorPrimitives.Dot(t, new ReadOnlySpan<double>(keyT + ((long)l * Block), visible));
                }

                Map.EmbeddingBackward(query + ((long)x * d), qg, b.DirectQuery + ((long)x * d));
                for (int j = 0; j < visible; j++)
                {
                    double* kg = b.KeyEmbeddingGradient + ((long)j * e);
                    for (int l = 0; l < e; l++)
                    {
                        kg[l] += t[j] * qe[l];
                    }
                }
            }
        }
    }

    /// <summary>One backward worker's buffers: the forward's scratch, then G, the adjoints, the input gradient and the diagonal's pairs.</summary>
    private sealed class BackwardScratch : IDisposable
    {
        private readonly DoubleBuffer _buffer;

        public BackwardScratch(FeatureMap map, int columns)
        {
            Forward = new Scratch(map, columns);
            int e = map.EmbeddingSize;
            long state = (long)map.PaddedCount * columns, block = Block;
            long[] sizes =
            [
                ColumnTile * block, columns * block, (long)map.PaddedCount * block, (long)map.Dimension * block, block * map.Dimension,
                block * block, block * block, block * e, block * e, block * columns, block, state, (long)map.PaddedCount * ColumnTile,
            ];
            _buffer = new DoubleBuffer(sizes.Sum() + (8 * sizes.Length));
            double*[] at = new double*[sizes.Length];
            double* next = _buffer.Pointer;
            for (int i = 0; i < sizes.Length; i++)
            {
                at[i] = next;
                next += (sizes[i] + 7) / 8 * 8; // 64-byte aligned, as the vector loads like
            }

            Normaliser = at[0];
            RowGradient = at[1];
            Adjoint = at[2];
            InputGradient = at[3];
            DirectQuery = at[4];
            PairWeights = at[5];
            PairDerivatives = at[6];
            QueryEmbeddings = at[7];
            KeyEmbeddingGradient = at[8];
            DirectValue = at[9];
            Dots = at[10];
            StateGradient = at[11];
            NormaliserState = at[12];
            StateDoubles = state;
            DiagonalDoubles = block * (e + columns);
        }

        public Scratch Forward { get; }

        /// <summary>z of the block's queries, [Block] (room for the 3-column tile the product writes).</summary>
        public double* Normaliser { get; }

        /// <summary>G = [dN | dz | 0] transposed, [Columns][Block]; in the key pass, dV transposed.</summary>
        public double* RowGradient { get; }

        /// <summary>dL/d feature, [rPad][Block].</summary>
        public double* Adjoint { get; }

        /// <summary>dL/d scaled input, [d][Block].</summary>
        public double* InputGradient { get; }

        /// <summary>The diagonal's direct part of dQ, [Block][d].</summary>
        public double* DirectQuery { get; }

        /// <summary>The diagonal's weights per query, [Block][Block].</summary>
        public double* PairWeights { get; }

        /// <summary>dw/d(dot) per diagonal pair, [Block][Block].</summary>
        public double* PairDerivatives { get; }

        /// <summary>The block's query embeddings, [Block][e].</summary>
        public double* QueryEmbeddings { get; }

        /// <summary>The diagonal keys' embedding gradients, [Block][e], summed over a block's queries and heads.</summary>
        public double* KeyEmbeddingGradient { get; }

        /// <summary>The diagonal's direct part of dV, [Block][dv], summed likewise (follows <see cref="KeyEmbeddingGradient"/>).</summary>
        public double* DirectValue { get; }

        /// <summary>One query's pair gradients against the diagonal block.</summary>
        public double* Dots { get; }

        /// <summary>A causal item's dL/dP, [rPad][Columns].</summary>
        public double* StateGradient { get; }

        /// <summary>The normaliser column of a causal item's state, [rPad][3].</summary>
        public double* NormaliserState { get; }

        public long StateDoubles { get; }

        /// <summary>Doubles of <see cref="KeyEmbeddingGradient"/> and <see cref="DirectValue"/> together.</summary>
        public long DiagonalDoubles { get; }

        public int[] Visible { get; } = new int[Block];

        public void Dispose()
        {
            Forward.Dispose();
            _buffer.Dispose();
        }
    }
}
