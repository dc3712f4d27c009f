using System.Buffers;
using System.Numerics.Tensors;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>The exact engine of <see cref="TensorAttention"/>: virtual queries, the kernel call and the merge by row statistics.</summary>
public static partial class TensorAttention
{
    /// <summary>One call's inputs, as pointers (pinned by the caller).</summary>
    private sealed unsafe class Problem(TensorAttentionShape shape, nint query, nint[] keys, nint[] values, nint output, nint logSumExp, float scale, TensorAttentionOptions options, AttentionKernel kernel)
    {
        private int D => shape.HeadDim;

        private int Dv => shape.ValueDim;

        private int Prefix => shape.KeyMatrices - 1;

        private float* Query(int h, int i) => (float*)query + ((((long)h * shape.QueryCount) + i) * D);

        private float* Key(int t, int h, int j) => (float*)keys[t] + ((((long)h * shape.KeyCount) + j) * D);

        private float* Value(int t, int h, int j) => (float*)values[t] + ((((long)h * shape.KeyCount) + j) * Dv);

        private float* Output(int h, int i) => (float*)output + ((((long)h * shape.QueryCount) + i) * Dv);

        /// <summary>
        /// Non-causal, no windows: every query sees every tuple; each head's queries go in groups that share the last key matrix.
        /// When a head's queries fit one call and the kernel is tiled, several heads share a call (up to <see cref="VirtualRowsPerCall"/>
        /// rows): the tiled kernel's (head, query tile) items are independent, so a head's bits are those of a call of its own, and
        /// the call's fixed costs (packing, scratch, three parallel regions) are paid once for all of them. Otherwise small heads
        /// (<see cref="HeadsInParallel"/>) run in parallel, one thread each, and large ones one after another, each on every thread.
        /// </summary>
        public double RunShared()
        {
            int nk = shape.KeyCount, nq = shape.QueryCount;
            long tuples = (long)Math.Pow(nk, Prefix);
            int group = GroupOf(shape, tuples), groups = (nq + group - 1) / group;
            int threads = options.MaxDegreeOfParallelism;
            if (group == nq && kernel.Name.StartsWith("tiled-", StringComparison.Ordinal))
            {
                int perCall = (int)Math.Clamp(VirtualRowsPerCall / (nq * tuples), 1, shape.HeadCount);
                using var work = new Workspace(Prefix, (int)(perCall * nq * tuples), D, Dv, nk);
                for (int h0 = 0; h0 < shape.HeadCount; h0 += perCall)
                {
                    Call(work, h0, Math.Min(perCall, shape.HeadCount - h0), 0, nq, 0, nk - 1, threads);
                }
            }
            else if (HeadsInParallel(shape.HeadCount, 2.0 * nq * tuples * nk * (D + Dv), threads))
            {
                int rows = (int)(Math.Min(group, nq) * tuples);
                ParallelWork.Run(shape.HeadCount * groups, threads, () => new Workspace(Prefix, rows, D, Dv, nk), (item, work) =>
                    Call(work, item / groups, 1, item % groups * group, Math.Min(group, nq - (item % groups * group)), 0, nk - 1, 1));
            }
            else
            {
                using var work = new Workspace(Prefix, (int)(Math.Min(group, nq) * tuples), D, Dv, nk);
                for (int h = 0; h < shape.HeadCount; h++)
                {
                    for (int i0 = 0; i0 < nq; i0 += group)
                    {
                        Call(work, h, 1, i0, Math.Min(group, nq - i0), 0, nk - 1, threads);
                    }
                }
            }

            return (double)shape.HeadCount * nq * tuples * nk;
        }

        /// <summary>Causal or windowed: each query has its own key ranges; the (head, query) items run in parallel, heaviest (latest) queries first.</summary>
        public double RunPerQuery()
        {
            int heads = shape.HeadCount, nq = shape.QueryCount;
            double[] work = new double[heads * nq];
            ParallelWork.Run(heads * nq, options.MaxDegreeOfParallelism, () => new Workspace(Prefix, MaxRowsPerCall(shape, options), D, Dv, shape.KeyCount), (item, space) =>
            {
                int h = item % heads, i = nq - 1 - (item / heads);
                double tuples = 1;
                for (int t = 0; t < Prefix; t++)
                {
                    (space.Lo[t], space.Hi[t]) = KeyRange(shape, options, i, t);
                    tuples *= Math.Max(0, space.Hi[t] - space.Lo[t] + 1);
                }

                (int lastLo, int lastHi) = KeyRange(shape, options, i, Prefix);
                if (tuples == 0 || lastHi < lastLo)
                {
                    new Span<float>(Output(h, i), Dv).Clear(); // no visible tuple: zeros, as exact attention
                    SetLogSumExp(h, i, float.NegativeInfinity);
                    return;
                }

                Call(space, h, 1, i, 1, lastLo, lastHi, 1);
                work[(h * nq) + i] = tuples * (lastHi - lastLo + 1);
            });
            return work.Sum(); // whole numbers below 2^53: exact in any order
        }

        /// <summary>
        /// Queries i0 .. i0+count of heads h0 .. h0+heads: virtual queries q_i o k1_j1 o ... over the prefix ranges [lo, hi] held in
        /// <paramref name="work"/>, against the last key matrix rows lastLo .. lastHi (all of them when heads &gt; 1: the heads' keys
        /// are then one contiguous block); then each query's rows merged by their softmax statistics. The buffers are the
        /// workspace's (one per worker, reused across calls); items are (head, query) pairs, head-major.
        /// </summary>
        private void Call(Workspace work, int h0, int heads, int i0, int count, int lastLo, int lastHi, int threads)
        {
            int[] lo = work.Lo, hi = work.Hi;
            int tuples = 1;
            for (int t = 0; t < Prefix; t++)
            {
                tuples *= hi[t] - lo[t] + 1;
            }

            long rows = (long)count * tuples;

            // Virtual queries, tuple-major per query, the first index slowest (queries in parallel when threads allow).
            float[] vqs = work.VirtualQueries;
            ForQueries(heads * count, threads, work, (item, merge) =>
            {
                float* q = Query(h0 + (item / count), i0 + (item % count));
                for (int tuple = 0; tuple < tuples; tuple++)
                {
                    Decode(tuple, lo, hi, merge.Index);
                    Span<float> row = vqs.AsSpan((int)((((long)item * tuples) + tuple) * D), D);
                    new ReadOnlySpan<float>(q, D).CopyTo(row);
                    for (int t = 0; t < Prefix; t++)
                    {
                        TensorPrimitives.Multiply(row, new ReadOnlySpan<float>(Key(t, h0 + (item / count), merge.Index[t]), D), row);
                    }
                }
            });

            fixed (float* vq = work.VirtualQueries, po = work.Partial, ps = work.Stats)
            {
                // Every virtual row of a head attends to the same keys: heads of count x tuples rows each.
                AttentionArgs args = AttentionArgs.FromShape(new AttentionShape(1, heads, (int)rows, lastHi - lastLo + 1, D, Dv));
                args.Query = vq;
                args.Key = Key(Prefix, h0, lastLo);
                args.Value = Value(Prefix, h0, lastLo);
                args.Output = po;
                args.RowStats = ps;
                args.Scale = scale;
                args.MaxDegreeOfParallelism = threads;
                kernel.Run(args);
            }

            // Merge: out_i = sum_tuple w (v1_j1 o ...) o o_tuple / sum_tuple w, w = l 2^(m - max m) (base-2 maxes); vectorised
            // along dv, queries in parallel when threads allow. Products are summed in float in blocks of MergeBlock tuples, the
            // blocks in double (error ~ (MergeBlock + tuples / MergeBlock) ulp instead of tuples ulp).
            float[] partials = work.Partial, statistics = work.Stats;
            ForQueries(heads * count, threads, work, (item, merge) =>
            {
                int h = h0 + (item / count), x = item % count;
                int[] index = merge.Index;
                float[] product = merge.Product, block = merge.Block;
                double[] acc = merge.Sum;
                Array.Clear(block);
                Array.Clear(acc);
                float max = float.NegativeInfinity;
                for (int tuple = 0; tuple < tuples; tuple++)
                {
                    max = MathF.Max(max, statistics[2 * ((item * tuples) + tuple)]);
                }

                double total = 0;
                int inBlock = 0;
                for (int tuple = 0; tuple < tuples && !float.IsNegativeInfinity(max); tuple++)
                {
                    int r = (item * tuples) + tuple;
                    double w = statistics[(2 * r) + 1] * double.Exp2(statistics[2 * r] - (double)max); // the kernel's maxes are base 2
                    if (w == 0)
                    {
                        continue;
                    }

                    total += w;
                    Decode(tuple, lo, hi, index);
                    ReadOnlySpan<float> o = partials.AsSpan(r * Dv, Dv);
                    if (Prefix == 0)
                    {
                        o.CopyTo(product);
                    }

                    for (int t = 0; t < Prefix; t++)
                    {
                        TensorPrimitives.Multiply(t == 0 ? o : product, new ReadOnlySpan<float>(Value(t, h, index[t]), Dv), product);
                    }

                    TensorPrimitives.MultiplyAdd(product, (float)w, block, block);
                    if (++inBlock == MergeBlock)
                    {
                        Flush(block, acc);
                        inBlock = 0;
                    }
                }

                Flush(block, acc);
                float* target = Output(h, i0 + x);
                for (int c = 0; c < Dv; c++)
                {
                    target[c] = total != 0 ? (float)(acc[c] / total) : 0f; // a row that saw no tuple is 0; a NaN total (overflowed scores) stays NaN
                }

                // sum over tuples of e^S = sum l 2^m = 2^max total (the kernel's maxes are base 2).
                SetLogSumExp(h, i0 + x, total != 0 ? (float)((max * Math.Log(2)) + Math.Log(total)) : float.NegativeInfinity);
            });
        }

        /// <summary>Runs <paramref name="body"/> for queries 0 .. count: in order on the workspace's merge buffers with one thread, else in parallel with a set per worker.</summary>
        private void ForQueries(int count, int threads, Workspace work, Action<int, MergeBuffers> body)
        {
            if (threads == 1 || count == 1)
            {
                for (int x = 0; x < count; x++)
                {
                    body(x, work.Merge);
                }

                return;
            }

            ParallelWork.Run(count, threads, () => new MergeBuffers(Prefix, Dv), body);
        }

        /// <summary>Records query i's log-sum-exp when the caller asked for them.</summary>
        private void SetLogSumExp(int h, int i, float value)
        {
            if (logSumExp != 0)
            {
                ((float*)logSumExp)[((long)h * shape.QueryCount) + i] = value;
            }
        }

        private static void Flush(float[] block, double[] acc)
        {
            for (int c = 0; c < block.Length; c++)
            {
                acc[c] += block[c];
            }

            Array.Clear(block);
        }

        /// <summary>Tuple number → key indices, the first index slowest.</summary>
        private void Decode(int tuple, int[] lo, int[] hi, int[] index)
        {
            for (int t = Prefix - 1; t >= 0; t--)
            {
                int span = hi[t] - lo[t] + 1;
                index[t] = lo[t] + (tuple % span);
                tuple /= span;
            }
        }
    }

    /// <summary>
    /// Whether <paramref name="heads"/> heads of <paramref name="flopsPerHead"/> flops each run in parallel (each on one thread)
    /// rather than one after another (each on every thread): when a head is below <see cref="SmallHeadFlops"/>, where the
    /// launches and scratch of a parallel region per head cost about as much as its work.
    /// </summary>
    internal static bool HeadsInParallel(int heads, double flopsPerHead, int threads) =>
        heads > 1 && threads != 1 && flopsPerHead <= SmallHeadFlops;

    /// <summary>Flops a head may have and still run on one thread beside other heads (about 10 ms of one core).</summary>
    private const double SmallHeadFlops = 1 << 28;

    /// <summary>One worker's buffers for the exact engine: the virtual queries, the kernel's outputs and row statistics, the prefix ranges and the merge's.</summary>
    private sealed class Workspace : IDisposable
    {
        public Workspace(int prefix, int rows, int d, int dv, int nk)
        {
            VirtualQueries = ArrayPool<float>.Shared.Rent(rows * d);
            Partial = ArrayPool<float>.Shared.Rent(rows * dv);
            Stats = ArrayPool<float>.Shared.Rent(rows * 2);
            Lo = new int[prefix];
            Hi = new int[prefix];
            Array.Fill(Hi, nk - 1);
            Merge = new MergeBuffers(prefix, dv);
        }

        public float[] VirtualQueries { get; }

        public float[] Partial { get; }

        public float[] Stats { get; }

        public int[] Lo { get; }

        public int[] Hi { get; }

        public MergeBuffers Merge { get; }

        public void Dispose()
        {
            ArrayPool<float>.Shared.Return(VirtualQueries);
            ArrayPool<float>.Shared.Return(Partial);
            ArrayPool<float>.Shared.Return(Stats);
        }
    }

    /// <summary>One thread's key indices and dv-long products and sums for the merge (and the virtual queries' index).</summary>
    private sealed class MergeBuffers(int prefix, int dv) : IDisposable
    {
        public int[] Index { get; } = new int[prefix];

        public float[] Product { get; } = new float[dv];

        public float[] Block { get; } = new float[dv];

        public double[] Sum { get; } = new double[dv];

        public void Dispose()
        {
        }
    }

    /// <summary>The key and value matrices pinned for the duration of a call, as pointers.</summary>
    private sealed unsafe class Pinned : IDisposable
    {
        private readonly MemoryHandle[] _handles;

        public Pinned(IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values)
        {
            _handles = [.. keys.Select(k => k.Pin()), .. values.Select(v => v.Pin())];
            Keys = [.. _handles.Take(keys.Count).Select(h => (nint)h.Pointer)];
            Values = [.. _handles.Skip(keys.Count).Select(h => (nint)h.Pointer)];
        }

        public nint[] Keys { get; }

        public nint[] Values { get; }

        public void Dispose()
        {
            foreach (MemoryHandle handle in _handles)
            {
                handle.Dispose();
            }
        }
    }
}
