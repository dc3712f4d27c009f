using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>The factorised engine's per-head work (features, key and query passes, the causal diagonal block) and its buffers.</summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>One kv head's keys and values and the query heads that share them.</summary>
    private readonly partial struct Head(in Problem p, FeatureMap map, double[] weight, double qScale, double kScale, int columns, float* key, float* value, long firstHead, int group)
    {
        private readonly float* _query = p.Query;
        private readonly float* _output = p.Output;
        private readonly double[] _weight = weight;
        private readonly double _qScale = qScale;
        private readonly double _kScale = kScale;
        private readonly FactorisedKernel _products = p.Products ?? FactorisedKernel.Default;

        public FeatureMap Map { get; } = map;

        public int Columns { get; } = columns;

        public int KeyCount { get; } = p.Shape.KeyCount;

        public int QueryCount { get; } = p.Shape.QueryCount;

        public int ValueDim { get; } = p.Shape.ValueDim;

        public int MaxDegree { get; } = p.MaxDegreeOfParallelism;

        public long FirstHead { get; } = firstHead;

        public int Group { get; } = group;

        private float* Key { get; } = key;

        private float* Value { get; } = value;

        public float* Output(long head, int i) => _output + (((head * QueryCount) + i) * ValueDim);

        /// <summary>state[a][c] += sum over keys j0 .. j1 of f_a(k_j) [v_j | 1]_c (unweighted).</summary>
        public void AccumulateKeys(int j0, int j1, double* state, Scratch s)
        {
            int d = Map.Dimension;
            for (int jb = j0; jb < j1; jb += Block)
            {
                int count = Math.Min(Block, j1 - jb);
                s.Evaluate(Key + ((long)jb * d), count, _kScale);
                ValuesTransposed(jb, count, s.Values);
                _products.KeyProduct(s.Features, Map.PaddedCount, s.Values, Columns, state);
            }
        }

        /// <summary>[v_j | 1 | 0 ...] of keys j0 .. j0+count transposed to vt[c][Block]; zero past count.</summary>
        public void ValuesTransposed(int j0, int count, double* vt)
        {
            int dv = ValueDim;
            for (int c = 0; c < Columns; c++)
            {
                double* line = vt + ((long)c * Block);
                for (int j = 0; j < count; j++)
                {
                    line[j] = c < dv ? Value[((long)(j0 + j) * dv) + c] : c == dv ? 1 : 0;
                }

                new Span<double>(line + count, Block - count).Clear();
            }
        }

        /// <summary>Features of query rows i0 .. i0+count of a head into the scratch's feature block.</summary>
        public void QueryFeatures(long head, int i0, int count, Scratch s) =>
            s.Evaluate(_query + (((head * QueryCount) + i0) * Map.Dimension), count, _qScale);

        /// <summary>Features of key rows j0 .. j0+count into the scratch's feature block.</summary>
        public void KeyFeatures(int j0, int count, Scratch s) => s.Evaluate(Key + ((long)j0 * Map.Dimension), count, _kScale);

        /// <summary>state[a][c] += f_a(k_j) [v_j | 1]_c for one key whose features are column <paramref name="column"/> of a key block.</summary>
        public void AddKey(int j, int column, double* features, double[] state)
        {
            float* v = Value + ((long)j * ValueDim);
            for (int a = 0; a < Map.Count; a++)
            {
                double f = features[((long)a * Block) + column];
                long at = (long)a * Columns;
                for (int c = 0; c < ValueDim; c++)
                {
                    state[at + c] += f * v[c];
                }

                state[at + ValueDim] += f;
            }
        }

        public void ApplyWeight(double* state)
        {
            for (int a = 0; a < Map.PaddedCount; a++)
            {
                for (int c = 0; c < Columns; c++)
                {
                    state[((long)a * Columns) + c] *= _weight[a];
                }
            }
        }

        /// <summary>The embeddings and values of key block <paramref name="diagonal"/> transposed into the scratch ([e][Block], [dv][Block]); returns its key count.</summary>
        public int DiagonalTransposed(int diagonal, Scratch s)
        {
            int d = Map.Dimension, dv = ValueDim, e = Map.EmbeddingSize;
            int j0 = diagonal * Block, keys = Math.Min(KeyCount, j0 + Block) - j0;
            double* keyT = s.KeyEmbedding, valueT = s.DiagonalValues;
            for (int j = 0; j < keys; j++)
            {
                Map.Embed(Key + ((long)(j0 + j) * d), s.QueryEmbedding);
                for (int l = 0; l < e; l++)
                {
                    keyT[((long)l * Block) + j] = s.QueryEmbedding[l];
                }

                float* v = Value + ((long)(j0 + j) * dv);
                for (int c = 0; c < dv; c++)
                {
                    valueT[((long)c * Block) + j] = v[c];
                }
            }

            return keys;
        }

        /// <summary>
        /// Output rows i0 .. i0+count of one head from a weighted state; with <paramref name="diagonal"/> &gt;= 0
        /// (causal), also the visible keys of key block <paramref name="diagonal"/>, weighted directly.
        /// </summary>
        public void Queries(long head, int i0, int count, double* weighted, int diagonal, Scratch s)
        {
            int d = Map.Dimension, dv = ValueDim;
            float* query = _query + (((head * QueryCount) + i0) * d);
            s.Evaluate(query, count, _qScale);
            double* ot = s.Values;
            _products.QueryProduct(s.Features, Map.PaddedCount, weighted, Columns, ot);

            if (diagonal >= 0)
            {
                // The visible keys of the diagonal block, weighted directly and vectorised along the keys:
                // embeddings and values transposed to [e][Block] and [dv][Block], dots by axpy, weights in place.
                int e = Map.EmbeddingSize;
                int j0 = diagonal * Block, keys = DiagonalTransposed(diagonal, s);
                double* keyT = s.KeyEmbedding, valueT = s.DiagonalValues, dots = s.Dots;
                long offset = (long)KeyCount - QueryCount;
                for (int x = 0; x < count; x++)
                {
                    int visible = (int)Math.Min(i0 + x + offset + 1 - j0, keys);
                    if (visible <= 0)
                    {
                        continue;
                    }

                    Map.Embed(query + ((long)x * d), s.QueryEmbedding);
                    var w = new Span<double>(dots, visible);
                    w.Clear();
                    for (int l = 0; l < e; l++)
                    {
                        var line = new ReadOnlySpan<double>(keyT + ((long)l * Block), visible);
                        System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(line, s.QueryEmbedding[l], w, w);
                    }

                    Map.WeightsOfDots(w);
                    for (int c = 0; c < dv; c++)
                    {
                        ot[((long)c * Block) + x] += System.Numerics.Tensors.TensorPrimitives.Dot(w, new ReadOnlySpan<double>(valueT + ((long)c * Block), visible));
                    }

                    ot[((long)dv * Block) + x] += System.Numerics.Tensors.TensorPrimitives.Sum<double>(w);
                }
            }

            for (int x = 0; x < count; x++)
            {
                // A zero normaliser (even powers with every q.k = 0) outputs zeros, as PowerAttention does.
                double l = ot[((long)dv * Block) + x];
                float* row = Output(head, i0 + x);
                for (int c = 0; c < dv; c++)
                {
                    row[c] = l == 0 ? 0f : (float)(ot[((long)c * Block) + x] / l);
                }
            }
        }
    }


    /// <summary>Native doubles from the shared pool (64-byte aligned).</summary>
    private readonly struct DoubleBuffer(long doubles) : IDisposable
    {
        private readonly NativeBufferPool.Buffer _buffer = NativeBufferPool.Rent(2 * Math.Max(doubles, 8));

        public double* Pointer => (double*)_buffer.Pointer;

        public void Clear() => new Span<double>(Pointer, (int)doubles).Clear();

        public void Dispose() => _buffer.Dispose();
    }


    /// <summary>One worker's buffers: features, [V | 1] (or the output) transposed, the map's scratch, embeddings.</summary>
    private sealed class Scratch : IDisposable
    {
        private readonly DoubleBuffer _buffer;
        private readonly FeatureMap _map;

        public Scratch(FeatureMap map, int columns)
        {
            _map = map;
            long features = (long)map.PaddedCount * Block, values = (long)columns * Block, embeddings = (long)(Block + 1) * map.EmbeddingSize;
            _buffer = new DoubleBuffer(features + (2 * values) + map.ScratchDoubles + embeddings + Block + 16);
            Features = _buffer.Pointer;
            Values = Features + features;
            DiagonalValues = Values + values;
            MapScratch = DiagonalValues + values;
            KeyEmbedding = MapScratch + map.ScratchDoubles;
            QueryEmbedding = KeyEmbedding + ((long)Block * map.EmbeddingSize);
            Dots = QueryEmbedding + map.EmbeddingSize;

            // The padding features (past r) stay zero.
            new Span<double>(Features + ((long)map.Count * Block), (map.PaddedCount - map.Count) * Block).Clear();
        }

        public double* Features { get; }

        public double* Values { get; }

        public double* MapScratch { get; }

        /// <summary>Key embeddings of a diagonal block, transposed: [e][Block].</summary>
        public double* KeyEmbedding { get; }

        /// <summary>Values of a diagonal block, transposed: [dv][Block].</summary>
        public double* DiagonalValues { get; }

        /// <summary>One query's dots, then weights, against a diagonal block.</summary>
        public double* Dots { get; }

        public double* QueryEmbedding { get; }

        public void Evaluate(float* rows, int count, double inputScale) => _map.Evaluate(rows, count, inputScale, Features, MapScratch);

        public void Dispose() => _buffer.Dispose();
    }
}
