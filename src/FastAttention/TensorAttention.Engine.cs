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

        /// <summary>Non-causal, no windows: every query sees every tuple; queries go in groups that share the last key matrix.</summary>
        public double RunShared(int h)
        {
            int nk = shape.KeyCount;
            long tuples = (long)Math.Pow(nk, Prefix);
            int group = GroupOf(shape, tuples);
            int[] lo = new int[Prefix], hi = new int[Prefix];
            Array.Fill(hi, nk - 1);
            for (int i0 = 0; i0 < shape.QueryCount; i0 += group)
            {
                int count = Math.Min(group, shape.QueryCount - i0);
                Call(h, i0, count, lo, hi, 0, nk - 1, options.MaxDegreeOfParallelism);
            }

            return (double)shape.QueryCount * tuples * nk;
        }

        /// <summary>Causal or windowed: each query has its own key ranges; queries run in parallel, heaviest first.</summary>
        public double RunPerQuery(int h)
        {
            double[] work = new double[shape.QueryCount];
            ParallelWork.Run(shape.QueryCount, options.MaxDegreeOfParallelism, () => new NoState(), (item, _) =>
            {
                int i = shape.QueryCount - 1 - item;
                int[] lo = new int[Prefix], hi = new int[Prefix];
                double tuples = 1;
                for (int t = 0; t < Prefix; t++)
                {
                    (lo[t], hi[t]) = KeyRange(shape, options, i, t);
                    tuples *= Math.Max(0, hi[t] - lo[t] + 1);
                }

                (int lastLo, int lastHi) = KeyRange(shape, options, i, Prefix);
                if (tuples == 0 || lastHi < lastLo)
                {
                    new Span<float>(Output(h, i), Dv).Clear(); // no visible tuple: zeros, as exact attention
                    SetLogSumExp(h, i, float.NegativeInfinity);
                    return;
                }

                Call(h, i, 1, lo, hi, lastLo, lastHi, 1);
                work[i] = tuples * (lastHi - lastLo + 1);
            });
            return work.Sum();
        }

        /// <summary>
        /// Queries i0 .. i0+count of head h: virtual queries q_i o k1_j1 o ... over the prefix ranges [lo, hi], against
        /// the last key matrix rows lastLo .. lastHi; then each query's rows merged by their softmax statistics.
        /// </summary>
        private void Call(int h, int i0, int count, int[] lo, int[] hi, int lastLo, int lastHi, int threads)
        {
            int tuples = 1;
            for (int t = 0; t < Prefix; t++)
            {
                tuples *= hi[t] - lo[t] + 1;
            }

            long rows = (long)count * tuples;
            float[] virtualQueries = ArrayPool<float>.Shared.Rent((int)(rows * D));
            float[] partial = ArrayPool<float>.Shared.Rent((int)(rows * Dv));
            float[] stats = ArrayPool<float>.Shared.Rent((int)(rows * 2));
            try
            {
                // Virtual queries, tuple-major per query, the first index slowest (queries in parallel).
                float[] vqs = virtualQueries;
                Parallel.For(0, count, Options(threads), x =>
                {
                    int[] index = new int[Prefix];
                    float* q = Query(h, i0 + x);
                    for (int tuple = 0; tuple < tuples; tuple++)
                    {
                        Decode(tuple, lo, hi, index);
                        Span<float> row = vqs.AsSpan((int)((((long)x * tuples) + tuple) * D), D);
                        new ReadOnlySpan<float>(q, D).CopyTo(row);
                        for (int t = 0; t < Prefix; t++)
                        {
                            TensorPrimitives.Multiply(row, new ReadOnlySpan<float>(Key(t, h, index[t]), D), row);
                        }
                    }
                });

                fixed (float* vq = virtualQueries, po = partial, ps = stats)
                {
                    // Every virtual row attends to the same keys: one head of count x tuples rows.
                    AttentionArgs args = AttentionArgs.FromShape(new AttentionShape(1, 1, (int)rows, lastHi - lastLo + 1, D, Dv));
                    args.Query = vq;
                    args.Key = Key(Prefix, h, lastLo);
                    args.Value = Value(Prefix, h, lastLo);
                    args.Output = po;
                    args.RowStats = ps;
                    args.Scale = scale;
                    args.MaxDegreeOfParallelism = threads;
                    kernel.Run(args);
                }

                // Merge: out_i = sum_tuple w (v1_j1 o ...) o o_tuple / sum_tuple w, w = l 2^(m - max m) (base-2 maxes); vectorised
                // along dv, queries in parallel. Products are summed in float in blocks of MergeBlock tuples, the
                // blocks in double (error ~ (MergeBlock + tuples / MergeBlock) ulp instead of tuples ulp).
                float[] partials = partial, statistics = stats;
                Parallel.For(0, count, Options(threads), x =>
                {
                    int[] index = new int[Prefix];
                    float[] product = new float[Dv], block = new float[Dv];
                    double[] acc = new double[Dv];
                    float max = float.NegativeInfinity;
                    for (int tuple = 0; tuple < tuples; tuple++)
                    {
                        max = MathF.Max(max, statistics[2 * ((x * tuples) + tuple)]);
                    }

                    double total = 0;
                    int inBlock = 0;
                    for (int tuple = 0; tuple < tuples && !float.IsNegativeInfinity(max); tuple++)
                    {
                        int r = (x * tuples) + tuple;
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
            finally
            {
                ArrayPool<float>.Shared.Return(virtualQueries);
                ArrayPool<float>.Shared.Return(partial);
                ArrayPool<float>.Shared.Return(stats);
            }
        }

        /// <summary>Records query i's log-sum-exp when the caller asked for them.</summary>
        private void SetLogSumExp(int h, int i, float value)
        {
            if (logSumExp != 0)
            {
                ((float*)logSumExp)[((long)h * shape.QueryCount) + i] = value;
            }
        }

        private static ParallelOptions Options(int threads) => new() { MaxDegreeOfParallelism = threads > 0 ? threads : -1 };

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

    private sealed class NoState : IDisposable
    {
        public void Dispose()
        {
        }
    }
}
