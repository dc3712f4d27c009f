using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>
/// Attention with factorised weights <c>w(q, k) = sum_a W_a f_a(q) f_a(k)</c> (<see cref="FeatureMap"/>):
/// <c>out_i = (f(q_i)^T M)[0..dv) / (f(q_i)^T M)[dv]</c>, <c>M = diag(W) sum_j f(k_j) [v_j | 1]^T</c>
/// (ALGORITHMS.md §2, step 3), in O(n r dv), in double, shaped as two thin GEMMs:
/// <list type="number">
/// <item>keys in blocks of <see cref="Block"/>: the block's features <c>F [r][Block]</c> (one vector op per
/// feature per 8 rows), then <c>M += F [V | 1]</c> by a 4-feature x 3-column register tile of dot products
/// along the block;</item>
/// <item>queries in blocks of <see cref="Block"/>: <c>O^T = (diag(W) M)^T F</c> by a 32-row x 3-column register
/// tile (broadcast M, FMA into the rows), then each row is divided by its normaliser column.</item>
/// </list>
/// Non-causal: per-chunk partial states of <see cref="NonCausalChunk"/> keys are computed in parallel and
/// added in chunk order. Causal (blockwise, item 5 of §2): the keys' per-block states become prefix sums
/// in order; query i, whose visible keys end inside key block c, takes the prefix state of the blocks
/// before c from the factorised product and the visible keys of block c directly from
/// <see cref="FeatureMap.PairWeight"/>. Every sum runs in an order fixed by the input, so the output bits
/// do not depend on the thread count.
/// </summary>
internal static unsafe class FactorisedAttention
{
    /// <summary>Rows per feature block (and keys per causal state block).</summary>
    public const int Block = 128;

    /// <summary>Keys per partial state in the non-causal pass.</summary>
    public const int NonCausalChunk = 1024;

    /// <summary>Features per pass of the query product.</summary>
    private const int FeatureChunk = 256;

    /// <summary>Columns of the register tiles; [V | 1] is padded to a multiple of it.</summary>
    private const int ColumnTile = 3;

    /// <summary>The whole problem, for every (batch, kv head).</summary>
    public readonly struct Problem
    {
        public float* Query { get; init; }

        public float* Key { get; init; }

        public float* Value { get; init; }

        public float* Output { get; init; }

        public AttentionShape Shape { get; init; }

        public FeatureMap Map { get; init; }

        /// <summary>W_a, for features of the unscaled inputs.</summary>
        public double[] Weight { get; init; }

        public bool Causal { get; init; }

        public int MaxDegreeOfParallelism { get; init; }
    }

    /// <summary>The longest chain of additions any output's rounding passes through (for the certificate's rounding term).</summary>
    public static long SummationDepth(int keyCount, int features, bool causal) =>
        Block + ((keyCount + Block - 1) / Block) + features + (causal ? Block : 0);

    public static void Run(in Problem p)
    {
        AttentionShape shape = p.Shape;
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        FeatureMap map = p.Map;
        int rPad = map.PaddedCount, cPad = RoundUp(dv + 1, ColumnTile);

        // Inputs are scaled into [-1, 1] before their features are formed (so high powers neither overflow
        // nor vanish); a feature of degree t then carries 1 / (qScale kScale)^t in its weight.
        double qScale = InverseMaxAbs(p.Query, shape.QueryLength), kScale = InverseMaxAbs(p.Key, shape.KeyLength);
        double[] weight = new double[rPad];
        for (int a = 0; a < map.Count; a++)
        {
            weight[a] = p.Weight[a] / Math.Pow(qScale * kScale, map.Degree[a]);
        }

        int threads = p.MaxDegreeOfParallelism > 0 ? p.MaxDegreeOfParallelism : Environment.ProcessorCount;
        long stateDoubles = (long)rPad * cPad;
        // Partial states held at once: enough to keep the threads busy, within 64 MiB.
        int wave = (int)Math.Clamp((64L << 20) / (stateDoubles * sizeof(double)), 1, 4 * threads);
        Func<Scratch> scratch = () => new Scratch(map, cPad);

        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < kvHeads; hk++)
            {
                long kv = ((long)b * kvHeads) + hk;
                var head = new Head(p, map, weight, qScale, kScale, cPad,
                    p.Key + (kv * nk * d), p.Value + (kv * nk * dv), ((long)b * shape.HeadCount) + (hk * group), group);
                if (p.Causal)
                {
                    RunCausal(head, wave, scratch);
                }
                else
                {
                    RunNonCausal(head, wave, scratch);
                }
            }
        }
    }

    private static void RunNonCausal(Head h, int wave, Func<Scratch> scratch)
    {
        using var state = new DoubleBuffer((long)h.Map.PaddedCount * h.Columns);
        KeyState(h, wave, scratch, state.Pointer);
        h.ApplyWeight(state.Pointer);
        QueryPass(h, state.Pointer, scratch);
    }

    /// <summary>state = sum over all keys of f(k_j) [v_j | 1] (unweighted): fixed chunks in parallel, added in chunk order.</summary>
    private static void KeyState(Head h, int wave, Func<Scratch> scratch, double* state)
    {
        long stateDoubles = (long)h.Map.PaddedCount * h.Columns;
        int chunks = (h.KeyCount + NonCausalChunk - 1) / NonCausalChunk;
        using var partials = new DoubleBuffer(stateDoubles * Math.Min(wave, chunks));
        new Span<double>(state, (int)stateDoubles).Clear();
        for (int c0 = 0; c0 < chunks; c0 += wave)
        {
            int count = Math.Min(wave, chunks - c0);
            Partials(h, c0 * NonCausalChunk, count, NonCausalChunk, partials.Pointer, stateDoubles, scratch);

            for (int item = 0; item < count; item++)
            {
                Add(state, partials.Pointer + (item * stateDoubles), stateDoubles);
            }
        }
    }

    /// <summary>Every query row of the head group from one weighted state, query blocks in parallel.</summary>
    private static void QueryPass(Head h, double* weighted, Func<Scratch> scratch)
    {
        int nq = h.QueryCount;
        int blocks = (nq + Block - 1) / Block;
        ParallelWork.Run(h.Group * blocks, h.MaxDegree, scratch, (item, s) =>
        {
            int i0 = item % blocks * Block;
            h.Queries(h.FirstHead + (item / blocks), i0, Math.Min(Block, nq - i0), weighted, -1, s);
        });
    }

    /// <summary>
    /// Tensor attention of order k (ALGORITHMS.md §3) with the same features: the Khatri–Rao identity turns
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
    public static void RunTensor(float* query, nint[] keys, nint[] values, float* output, AttentionShape shape, FeatureMap map, double[] weightOfFeature, bool causal, int maxDegree)
    {
        int d = shape.HeadDim, dv = shape.ValueDim, nq = shape.QueryCount, nk = shape.KeyCount;
        int rPad = map.PaddedCount, cPad = RoundUp(dv + 1, ColumnTile);
        double qScale = InverseMaxAbs(query, shape.QueryLength);
        double[] kScale = [.. keys.Select(k => InverseMaxAbs((float*)k, shape.KeyLength))];
        double combined = qScale * kScale.Aggregate(1.0, (x, y) => x * y);
        double[] weight = new double[rPad];
        for (int a = 0; a < map.Count; a++)
        {
            weight[a] = weightOfFeature[a] / Math.Pow(combined, map.Degree[a]);
        }

        int threads = maxDegree > 0 ? maxDegree : Environment.ProcessorCount;
        long stateDoubles = (long)rPad * cPad;
        int wave = (int)Math.Clamp((64L << 20) / (stateDoubles * sizeof(double)), 1, 4 * threads);
        Func<Scratch> scratch = () => new Scratch(map, cPad);
        var problem = new Problem { Query = query, Output = output, Shape = shape, Map = map, Weight = weight, MaxDegreeOfParallelism = maxDegree };
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

    private static void RunCausal(Head h, int wave, Func<Scratch> scratch)
    {
        int nk = h.KeyCount, nq = h.QueryCount;
        long offset = (long)nk - nq; // query i sees keys j < i + offset + 1
        long stateDoubles = (long)h.Map.PaddedCount * h.Columns;
        int blocks = (nk + Block - 1) / Block;

        // Queries that see no key output zeros.
        int blind = (int)Math.Clamp(-offset, 0, nq);
        for (int g = 0; g < h.Group; g++)
        {
            new Span<float>(h.Output(h.FirstHead + g, 0), blind * h.ValueDim).Clear();
        }

        using var prefix = new DoubleBuffer(stateDoubles);
        using var partials = new DoubleBuffer(stateDoubles * Math.Min(wave, blocks));
        using var weighted = new DoubleBuffer(stateDoubles * Math.Min(wave, blocks));
        prefix.Clear();
        for (int c0 = 0; c0 < blocks; c0 += wave)
        {
            int count = Math.Min(wave, blocks - c0);
            Partials(h, c0 * Block, count, Block, partials.Pointer, stateDoubles, scratch);

            // Prefix states in block order: block c's queries use the keys of blocks 0 .. c-1.
            for (int item = 0; item < count; item++)
            {
                double* w = weighted.Pointer + (item * stateDoubles);
                new Span<double>(prefix.Pointer, (int)stateDoubles).CopyTo(new Span<double>(w, (int)stateDoubles));
                h.ApplyWeight(w);
                Add(prefix.Pointer, partials.Pointer + (item * stateDoubles), stateDoubles);
            }

            ParallelWork.Run(h.Group * count, h.MaxDegree, scratch, (item, s) =>
            {
                int c = c0 + (item % count);
                // Queries whose last visible key lies in block c: c Block < i + offset + 1 <= (c + 1) Block.
                long first = Math.Max((long)c * Block - offset, 0), last = Math.Min((((long)c + 1) * Block) - offset - 1, nq - 1);
                if (first <= last)
                {
                    h.Queries(h.FirstHead + (item / count), (int)first, (int)(last - first + 1), weighted.Pointer + (item % count * stateDoubles), c, s);
                }
            });
        }
    }

    /// <summary>In parallel: partial state i (unweighted) of the keys in chunk i of <paramref name="count"/> chunks starting at key <paramref name="j0"/>.</summary>
    private static void Partials(Head h, int j0, int count, int chunk, double* partials, long stateDoubles, Func<Scratch> scratch)
    {
        ParallelWork.Run(count, h.MaxDegree, scratch, (item, s) =>
        {
            double* partial = partials + (item * stateDoubles);
            new Span<double>(partial, (int)stateDoubles).Clear();
            int start = j0 + (item * chunk);
            h.AccumulateKeys(start, Math.Min(h.KeyCount, start + chunk), partial, s);
        });
    }

    /// <summary>One kv head's keys and values and the query heads that share them.</summary>
    private readonly struct Head(in Problem p, FeatureMap map, double[] weight, double qScale, double kScale, int columns, float* key, float* value, long firstHead, int group)
    {
        private readonly float* _query = p.Query;
        private readonly float* _output = p.Output;
        private readonly double[] _weight = weight;
        private readonly double _qScale = qScale;
        private readonly double _kScale = kScale;

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
            int d = Map.Dimension, dv = ValueDim;
            for (int jb = j0; jb < j1; jb += Block)
            {
                int count = Math.Min(Block, j1 - jb);
                s.Evaluate(Key + ((long)jb * d), count, _kScale);
                double* vt = s.Values;
                for (int c = 0; c < Columns; c++)
                {
                    double* line = vt + ((long)c * Block);
                    for (int j = 0; j < count; j++)
                    {
                        line[j] = c < dv ? Value[((long)(jb + j) * dv) + c] : c == dv ? 1 : 0;
                    }

                    new Span<double>(line + count, Block - count).Clear();
                }

                KeyProduct(s.Features, Map.PaddedCount, vt, Columns, state);
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
            QueryProduct(s.Features, Map.PaddedCount, weighted, Columns, ot);

            if (diagonal >= 0)
            {
                // The visible keys of the diagonal block, weighted directly and vectorised along the keys:
                // embeddings and values transposed to [e][Block] and [dv][Block], dots by axpy, weights in place.
                int e = Map.EmbeddingSize;
                int j0 = diagonal * Block, j1 = Math.Min(KeyCount, j0 + Block), keys = j1 - j0;
                double* keyT = s.KeyEmbedding, valueT = s.DiagonalValues, dots = s.Dots;
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

    /// <summary>state[a][c] += sum_j F[a][j] VT[c][j]: 4 features x 3 columns of dot products along the block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KeyProduct(double* f, int rPad, double* vt, int cPad, double* state)
    {
        for (int a = 0; a < rPad; a += 4)
        {
            double* f0 = f + ((long)a * Block), f1 = f0 + Block, f2 = f1 + Block, f3 = f2 + Block;
            for (int c = 0; c < cPad; c += ColumnTile)
            {
                double* v0 = vt + ((long)c * Block), v1 = v0 + Block, v2 = v1 + Block;
                Vector512<double> a00 = default, a01 = default, a02 = default, a10 = default, a11 = default, a12 = default;
                Vector512<double> a20 = default, a21 = default, a22 = default, a30 = default, a31 = default, a32 = default;
                for (int j = 0; j < Block; j += 8)
                {
                    Vector512<double> x0 = Vector512.Load(v0 + j), x1 = Vector512.Load(v1 + j), x2 = Vector512.Load(v2 + j);
                    Vector512<double> y = Vector512.Load(f0 + j);
                    a00 = Vector512.FusedMultiplyAdd(y, x0, a00);
                    a01 = Vector512.FusedMultiplyAdd(y, x1, a01);
                    a02 = Vector512.FusedMultiplyAdd(y, x2, a02);
                    y = Vector512.Load(f1 + j);
                    a10 = Vector512.FusedMultiplyAdd(y, x0, a10);
                    a11 = Vector512.FusedMultiplyAdd(y, x1, a11);
                    a12 = Vector512.FusedMultiplyAdd(y, x2, a12);
                    y = Vector512.Load(f2 + j);
                    a20 = Vector512.FusedMultiplyAdd(y, x0, a20);
                    a21 = Vector512.FusedMultiplyAdd(y, x1, a21);
                    a22 = Vector512.FusedMultiplyAdd(y, x2, a22);
                    y = Vector512.Load(f3 + j);
                    a30 = Vector512.FusedMultiplyAdd(y, x0, a30);
                    a31 = Vector512.FusedMultiplyAdd(y, x1, a31);
                    a32 = Vector512.FusedMultiplyAdd(y, x2, a32);
                }

                double* s = state + ((long)a * cPad) + c;
                s[0] += Vector512.Sum(a00);
                s[1] += Vector512.Sum(a01);
                s[2] += Vector512.Sum(a02);
                s += cPad;
                s[0] += Vector512.Sum(a10);
                s[1] += Vector512.Sum(a11);
                s[2] += Vector512.Sum(a12);
                s += cPad;
                s[0] += Vector512.Sum(a20);
                s[1] += Vector512.Sum(a21);
                s[2] += Vector512.Sum(a22);
                s += cPad;
                s[0] += Vector512.Sum(a30);
                s[1] += Vector512.Sum(a31);
                s[2] += Vector512.Sum(a32);
            }
        }
    }

    /// <summary>
    /// OT[c][i] = sum_a F[a][i] M[a][c]: 32 rows (4 vectors) x 3 columns, broadcasting M. The features go in
    /// chunks of <see cref="FeatureChunk"/> (256 KiB of F, in L2) so large r streams F from memory once,
    /// not once per column tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void QueryProduct(double* f, int rPad, double* m, int cPad, double* ot)
    {
        for (int a0 = 0; a0 < rPad; a0 += FeatureChunk)
        {
            int a1 = Math.Min(rPad, a0 + FeatureChunk);
            for (int i = 0; i < Block; i += 32)
            {
                for (int c = 0; c < cPad; c += ColumnTile)
                {
                    double* o0 = ot + ((long)c * Block) + i, o1 = o0 + Block, o2 = o1 + Block;
                    Vector512<double> a00 = default, a01 = default, a02 = default, a10 = default, a11 = default, a12 = default;
                    Vector512<double> a20 = default, a21 = default, a22 = default, a30 = default, a31 = default, a32 = default;
                    if (a0 > 0)
                    {
                        a00 = Vector512.Load(o0);
                        a01 = Vector512.Load(o1);
                        a02 = Vector512.Load(o2);
                        a10 = Vector512.Load(o0 + 8);
                        a11 = Vector512.Load(o1 + 8);
                        a12 = Vector512.Load(o2 + 8);
                        a20 = Vector512.Load(o0 + 16);
                        a21 = Vector512.Load(o1 + 16);
                        a22 = Vector512.Load(o2 + 16);
                        a30 = Vector512.Load(o0 + 24);
                        a31 = Vector512.Load(o1 + 24);
                        a32 = Vector512.Load(o2 + 24);
                    }

                    double* fa = f + ((long)a0 * Block) + i, ma = m + ((long)a0 * cPad) + c;
                    for (int a = a0; a < a1; a++, fa += Block, ma += cPad)
                    {
                        Vector512<double> m0 = Vector512.Create(ma[0]), m1 = Vector512.Create(ma[1]), m2 = Vector512.Create(ma[2]);
                        Vector512<double> y = Vector512.Load(fa);
                        a00 = Vector512.FusedMultiplyAdd(y, m0, a00);
                        a01 = Vector512.FusedMultiplyAdd(y, m1, a01);
                        a02 = Vector512.FusedMultiplyAdd(y, m2, a02);
                        y = Vector512.Load(fa + 8);
                        a10 = Vector512.FusedMultiplyAdd(y, m0, a10);
                        a11 = Vector512.FusedMultiplyAdd(y, m1, a11);
                        a12 = Vector512.FusedMultiplyAdd(y, m2, a12);
                        y = Vector512.Load(fa + 16);
                        a20 = Vector512.FusedMultiplyAdd(y, m0, a20);
                        a21 = Vector512.FusedMultiplyAdd(y, m1, a21);
                        a22 = Vector512.FusedMultiplyAdd(y, m2, a22);
                        y = Vector512.Load(fa + 24);
                        a30 = Vector512.FusedMultiplyAdd(y, m0, a30);
                        a31 = Vector512.FusedMultiplyAdd(y, m1, a31);
                        a32 = Vector512.FusedMultiplyAdd(y, m2, a32);
                    }

                    Vector512.Store(a00, o0);
                    Vector512.Store(a01, o1);
                    Vector512.Store(a02, o2);
                    Vector512.Store(a10, o0 + 8);
                    Vector512.Store(a11, o1 + 8);
                    Vector512.Store(a12, o2 + 8);
                    Vector512.Store(a20, o0 + 16);
                    Vector512.Store(a21, o1 + 16);
                    Vector512.Store(a22, o2 + 16);
                    Vector512.Store(a30, o0 + 24);
                    Vector512.Store(a31, o1 + 24);
                    Vector512.Store(a32, o2 + 24);
                }
            }
        }
    }

    private static void Multiply(double* target, double* source, long count)
    {
        System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<double>(target, (int)count), new ReadOnlySpan<double>(source, (int)count), new Span<double>(target, (int)count));
    }

    private static void Add(double* target, double* source, long count)
    {
        System.Numerics.Tensors.TensorPrimitives.Add(new ReadOnlySpan<double>(target, (int)count), new ReadOnlySpan<double>(source, (int)count), new Span<double>(target, (int)count));
    }

    private static double InverseMaxAbs(float* x, long length)
    {
        float max = 0;
        for (long i = 0; i < length; i += int.MaxValue / 2)
        {
            var span = new ReadOnlySpan<float>(x + i, (int)Math.Min(int.MaxValue / 2, length - i));
            max = Math.Max(max, Math.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(span)));
        }

        return max > 0 ? 1.0 / max : 1.0;
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// <summary>Native doubles from the shared pool (64-byte aligned).</summary>
    private readonly struct DoubleBuffer(long doubles) : IDisposable
    {
        private readonly NativeBufferPool.Buffer _buffer = NativeBufferPool.Rent(2 * Math.Max(doubles, 8));

        public double* Pointer => (double*)_buffer.Pointer;

        public void Clear() => new Span<double>(Pointer, (int)doubles).Clear();

        public void Dispose() => _buffer.Dispose();
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
