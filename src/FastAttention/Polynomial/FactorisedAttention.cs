using FastAttention.Kernels;

namespace FastAttention.Polynomial;

/// <summary>
/// Attention with factorised weights <c>w(q, k) = sum_a W_a f_a(q) f_a(k)</c> (<see cref="FeatureMap"/>):
/// <c>out_i = (f(q_i)^T M)[0..dv) / (f(q_i)^T M)[dv]</c>, <c>M = diag(W) sum_j f(k_j) [v_j | 1]^T</c>
/// (docs/algorithms.md §2, step 3), in O(n r dv), in double, shaped as two thin GEMMs:
/// <list type="number">
/// <item>keys in blocks of <see cref="Block"/>: the block's features <c>F [r][Block]</c> (one vector op per
/// feature per vector of rows), then <c>M += F [V | 1]</c> by a 4-feature x 3-column register tile of dot products
/// along the block;</item>
/// <item>queries in blocks of <see cref="Block"/>: <c>O^T = (diag(W) M)^T F</c> by a 4-vector-row x 3-column register
/// tile (broadcast M, FMA into the rows), then each row is divided by its normaliser column.</item>
/// </list>
/// Non-causal: per-chunk partial states of <see cref="NonCausalChunk"/> keys are computed in parallel and
/// added in chunk order. Causal (blockwise, item 5 of §2): the keys' per-block states become prefix sums
/// in order; query i, whose visible keys end inside key block c, takes the prefix state of the blocks
/// before c from the factorised product and the visible keys of block c directly from
/// <see cref="FeatureMap.PairWeight"/>. Every sum runs in an order fixed by the input, so the output bits
/// do not depend on the thread count. The products run at the widest vector width the CPU accelerates
/// (<see cref="FactorisedKernel"/>: Vector512, Vector256 or scalar, as the other kernels choose).
/// </summary>
internal static unsafe partial class FactorisedAttention
{
    /// <summary>Rows per feature block (and keys per causal state block).</summary>
    public const int Block = 128;

    /// <summary>Keys per partial state in the non-causal pass.</summary>
    public const int NonCausalChunk = 1024;

    /// <summary>Features per pass of the query product.</summary>
    internal const int FeatureChunk = 256;

    /// <summary>Columns of the register tiles; [V | 1] is padded to a multiple of it.</summary>
    internal const int ColumnTile = 3;

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

        /// <summary>The width of the products; null means <see cref="FactorisedKernel.Default"/> (tests force each).</summary>
        public FactorisedKernel? Products { get; init; }
    }

    /// <summary>The longest chain of additions any output's rounding passes through (for the certificate's rounding term).</summary>
    public static long SummationDepth(int keyCount, int features, bool causal) =>
        Block + ((keyCount + Block - 1) / Block) + features + (causal ? Block : 0);

    public static void Run(in Problem p)
    {
        FeatureMap map = p.Map;
        (double qScale, double kScale, double[] weight, int cPad, int wave) = Setup(p);
        Func<Scratch> scratch = () => new Scratch(map, cPad);
        bool causal = p.Causal;
        EachHead(p, qScale, kScale, weight, cPad, (head, _) =>
        {
            if (causal)
            {
                RunCausal(head, wave, scratch);
            }
            else
            {
                RunNonCausal(head, wave, scratch);
            }
        });
    }

    /// <summary>Every (batch, kv head) in order, as the <see cref="Head"/> of its keys and values and the query heads sharing them, with its index b kvHeads + hk.</summary>
    private static void EachHead(Problem p, double qScale, double kScale, double[] weight, int cPad, Action<Head, long> body)
    {
        AttentionShape shape = p.Shape;
        int d = shape.HeadDim, dv = shape.ValueDim, nk = shape.KeyCount;
        int kvHeads = shape.EffectiveKeyValueHeads, group = shape.HeadCount / kvHeads;
        for (int b = 0; b < shape.BatchSize; b++)
        {
            for (int hk = 0; hk < kvHeads; hk++)
            {
                long kv = ((long)b * kvHeads) + hk;
                body(new Head(p, p.Map, weight, qScale, kScale, cPad, p.Key + (kv * nk * d), p.Value + (kv * nk * dv), ((long)b * shape.HeadCount) + (hk * group), group), kv);
            }
        }
    }

    /// <summary>The input scales, the engine's weights, the padded column count and the partial states held at once.</summary>
    private static (double QScale, double KScale, double[] Weight, int Columns, int Wave) Setup(in Problem p)
    {
        FeatureMap map = p.Map;
        (int cPad, int wave) = Layout(map, p.Shape.ValueDim, p.MaxDegreeOfParallelism);

        // Inputs are scaled into [-1, 1] before their features are formed (so high powers neither overflow
        // nor vanish); a feature of degree t then carries 1 / (qScale kScale)^t in its weight.
        double qScale = InverseMaxAbs(p.Query, p.Shape.QueryLength), kScale = InverseMaxAbs(p.Key, p.Shape.KeyLength);
        double[] weight = new double[map.PaddedCount];
        for (int a = 0; a < map.Count; a++)
        {
            weight[a] = p.Weight[a] / Math.Pow(qScale * kScale, map.Degree[a]);
        }

        return (qScale, kScale, weight, cPad, wave);
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

}
