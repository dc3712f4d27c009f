using System.Runtime.Intrinsics;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>The backward pass of exact tensor attention (docs/algorithms.md §3.3).</summary>
public static partial class TensorAttention
{
    private const string GradientWhy = "The backward pass needs a finite output gradient (tensor attention has no non-finite mode).";

    /// <summary>
    /// The gradients of exact order-3 tensor attention (docs/algorithms.md §3.3): with <c>P = e^(S - L_i)</c> from the
    /// forward's log-sum-exp, <c>dP = dO_i . (v1_j1 o v2_j2)</c>, <c>D_i = dO_i . O_i</c> and <c>dS = P (dP - D_i)</c>,
    /// <c>dq_i = s sum dS (k1_j1 o k2_j2)</c>, <c>dk1_j1 = s sum_(i,j2) dS (q_i o k2_j2)</c>, <c>dk2_j2 = s sum_(i,j1) dS (q_i o k1_j1)</c>,
    /// <c>dv1_j1 = sum_(i,j2) P (dO_i o v2_j2)</c>, <c>dv2_j2 = sum_(i,j1) P (dO_i o v1_j1)</c>. Per query these are small GEMMs on
    /// the library's micro-kernel, tiled over (j1, j2) so no <c>nk x nk</c> matrix is held; causal and windows as in the forward.
    /// The bits do not depend on the thread count. A query that sees no pair (log-sum-exp <c>-inf</c>) gets zero gradient.
    /// </summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="key1">K1, <c>[h, nk, d]</c>.</param>
    /// <param name="key2">K2, <c>[h, nk, d]</c>.</param>
    /// <param name="value1">V1, <c>[h, nk, dv]</c>.</param>
    /// <param name="value2">V2, <c>[h, nk, dv]</c>.</param>
    /// <param name="output">The forward's output O, <c>[h, nq, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[h, nq, dv]</c>; must be finite.</param>
    /// <param name="logSumExp">The forward's log-sum-exp per query, <c>[h, nq]</c> (from the <c>Compute</c> overload that returns it).</param>
    /// <param name="shape">The dimensions (order 3).</param>
    /// <param name="queryGradient">dQ, <c>[h, nq, d]</c>, written.</param>
    /// <param name="key1Gradient">dK1, <c>[h, nk, d]</c>, written.</param>
    /// <param name="key2Gradient">dK2, <c>[h, nk, d]</c>, written.</param>
    /// <param name="value1Gradient">dV1, <c>[h, nk, dv]</c>, written.</param>
    /// <param name="value2Gradient">dV2, <c>[h, nk, dv]</c>, written.</param>
    /// <param name="options">The forward's scale, causal flag and windows; threads.</param>
    /// <param name="logSumExpGradient">Optional: the loss's gradient with respect to the log-sum-exp output <c>L_i</c> too, <c>[h, nq]</c>, finite
    /// (for a model that reads how strongly a query matches, or merges partial results by their log-sum-exp). Since
    /// <c>dL_i / dS = P</c>, it enters as <c>dS = P (dP - D_i + gL_i)</c>. Empty means none.</param>
    /// <returns>The kernel and the flops (<see cref="FlopCount.TensorAttentionBackward"/>).</returns>
    /// <exception cref="ArgumentException">A length, an overlap, the windows or a non-finite input (<paramref name="outputGradient"/> included) is invalid; the message names it.</exception>
    public static unsafe AttentionRun Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key1, ReadOnlySpan<float> key2, ReadOnlySpan<float> value1, ReadOnlySpan<float> value2,
        ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, TensorAttentionShape shape,
        Span<float> queryGradient, Span<float> key1Gradient, Span<float> key2Gradient, Span<float> value1Gradient, Span<float> value2Gradient, TensorAttentionOptions options = default,
        ReadOnlySpan<float> logSumExpGradient = default)
    {
        RequireOrder3(shape);
        fixed (float* k1 = key1, k2 = key2, v1 = value1, v2 = value2)
        {
            ReadOnlyMemory<float>[] keys = [PinnedMemory.Over(k1, key1.Length), PinnedMemory.Over(k2, key2.Length)];
            ReadOnlyMemory<float>[] values = [PinnedMemory.Over(v1, value1.Length), PinnedMemory.Over(v2, value2.Length)];
            Check3(query, keys, values, output, outputGradient, logSumExp, shape, queryGradient, key1Gradient, key2Gradient, value1Gradient, value2Gradient, options);
        }

        if (!logSumExpGradient.IsEmpty)
        {
            FastAttention.Validate.Length(logSumExpGradient.Length, (long)shape.HeadCount * shape.QueryCount, nameof(logSumExpGradient), "[h, nq]", shape);
            FiniteCheck.Require(logSumExpGradient, nameof(logSumExpGradient), 1, GradientWhy);
        }

        // The width follows the forced kernel (option or environment variable) as the forward's does, so a forced forward and
        // its backward recompute the same scores; an unknown name is an error here too.
        string width = KernelRegistry.SelectBackward(options.Kernel).Name["tiled-".Length..];
        int nq = shape.QueryCount, nk = shape.KeyCount, d = shape.HeadDim, dv = shape.ValueDim;
        float scale = options.Scale ?? (1f / d);
        float[] rowDot = RowDots(output, outputGradient, dv);
        for (int r = 0; r < logSumExpGradient.Length; r++)
        {
            rowDot[r] -= logSumExpGradient[r]; // dS = P (dP - (D - gL)): the log-sum-exp's own gradient is P gL
        }

        TensorAttentionOptions limits = options;
        Func<int, (int, int, int, int)> ranges = i =>
        {
            (int lo1, int hi1) = KeyRange(shape, limits, i, 0);
            (int lo2, int hi2) = KeyRange(shape, limits, i, 1);
            return (lo1, hi1, lo2, hi2);
        };

        // Small heads run in parallel, one thread each; large ones one after another on every thread. The chunks of a head
        // and their order of summation are the same either way, so a head's bits do not depend on the choice.
        int threads = options.MaxDegreeOfParallelism;
        bool parallelHeads = HeadsInParallel(shape.HeadCount, FlopCount.TensorAttentionBackward(shape, options) / shape.HeadCount, threads);
        fixed (float* q = query, k1 = key1, k2 = key2, v1 = value1, v2 = value2, dO = outputGradient, lse = logSumExp, dots = rowDot)
        fixed (float* dq = queryGradient, dk1 = key1Gradient, dk2 = key2Gradient, dv1 = value1Gradient, dv2 = value2Gradient)
        {
            var heads = new TensorBackwardHead[shape.HeadCount];
            for (int h = 0; h < heads.Length; h++)
            {
                long qo = (long)h * nq * d, ko = (long)h * nk * d, vo = (long)h * nk * dv, oo = (long)h * nq * dv;
                heads[h] = new TensorBackwardHead
                {
                    Query = q + qo, Key1 = k1 + ko, Key2 = k2 + ko, Value1 = v1 + vo, Value2 = v2 + vo, OutputGradient = dO + oo, LogSumExp = lse + ((long)h * nq), RowDot = dots + ((long)h * nq),
                    QueryGradient = dq + qo, Key1Gradient = dk1 + ko, Key2Gradient = dk2 + ko, Value1Gradient = dv1 + vo, Value2Gradient = dv2 + vo,
                };
            }

            if (parallelHeads)
            {
                ParallelWork.Run(heads.Length, threads, () => new TensorBackwardBuffers(), (h, buffers) => RunHead(width, heads[h], nq, nk, d, dv, scale, ranges, 1, buffers));
            }
            else
            {
                using var buffers = new TensorBackwardBuffers();
                foreach (TensorBackwardHead head in heads)
                {
                    RunHead(width, head, nq, nk, d, dv, scale, ranges, threads, buffers);
                }
            }
        }

        return new AttentionRun("tensor-backward-" + width, FlopCount.TensorAttentionBackward(shape, options));
    }

    /// <summary>
    /// The gradients of exact order-k tensor attention: order 3 runs the tiled kernel of the order-3 overload; other orders
    /// run a simple implementation that enumerates every tuple in double (O(nq nk^(k-1) k (d + dv)), for small n), which
    /// recomputes the softmax and so does not read <paramref name="output"/> or <paramref name="logSumExp"/> beyond their checks.
    /// </summary>
    /// <param name="query">Q, <c>[h, nq, d]</c>.</param>
    /// <param name="keys">K1 .. K(k-1), each <c>[h, nk, d]</c>.</param>
    /// <param name="values">V1 .. V(k-1), each <c>[h, nk, dv]</c>.</param>
    /// <param name="output">The forward's output O, <c>[h, nq, dv]</c>.</param>
    /// <param name="outputGradient">dO, <c>[h, nq, dv]</c>; must be finite.</param>
    /// <param name="logSumExp">The forward's log-sum-exp per query, <c>[h, nq]</c>.</param>
    /// <param name="shape">The dimensions.</param>
    /// <param name="queryGradient">dQ, <c>[h, nq, d]</c>, written.</param>
    /// <param name="keyGradients">dK1 .. dK(k-1), each <c>[h, nk, d]</c>, written.</param>
    /// <param name="valueGradients">dV1 .. dV(k-1), each <c>[h, nk, dv]</c>, written.</param>
    /// <param name="options">The forward's scale, causal flag and windows; threads.</param>
    /// <returns>The kernel and the flops (<see cref="FlopCount.TensorAttentionBackward"/>).</returns>
    /// <exception cref="ArgumentException">A count, length, overlap, the windows or a non-finite input is invalid; the message names it.</exception>
    public static AttentionRun Backward(ReadOnlySpan<float> query, IReadOnlyList<ReadOnlyMemory<float>> keys, IReadOnlyList<ReadOnlyMemory<float>> values,
        ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, TensorAttentionShape shape,
        Span<float> queryGradient, IReadOnlyList<Memory<float>> keyGradients, IReadOnlyList<Memory<float>> valueGradients, TensorAttentionOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(keyGradients);
        ArgumentNullException.ThrowIfNull(valueGradients);
        CheckInputs(query, keys, values, shape);
        if (keyGradients.Count != shape.KeyMatrices || valueGradients.Count != shape.KeyMatrices)
        {
            FastAttention.Validate.Fail(nameof(keyGradients), $"order {shape.Order} takes {shape.KeyMatrices} key and {shape.KeyMatrices} value gradients", $"{keyGradients.Count} and {valueGradients.Count}",
                $"{shape.KeyMatrices} of each", "pass one gradient per key and value matrix");
        }

        if (shape.Order == 3)
        {
            return Backward(query, keys[0].Span, keys[1].Span, values[0].Span, values[1].Span, output, outputGradient, logSumExp, shape,
                queryGradient, keyGradients[0].Span, keyGradients[1].Span, valueGradients[0].Span, valueGradients[1].Span, options);
        }

        CheckBackwardLengths(output, outputGradient, logSumExp, shape);
        FastAttention.Validate.Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), "[h, nq, d]", shape);
        Memory<float>[] gradients = [.. keyGradients, .. valueGradients];
        for (int t = 0; t < gradients.Length; t++)
        {
            FastAttention.Validate.Length(gradients[t].Length, t < shape.KeyMatrices ? shape.KeyLength : shape.ValueLength, t < shape.KeyMatrices ? nameof(keyGradients) : nameof(valueGradients),
                t < shape.KeyMatrices ? "[h, nk, d]" : "[h, nk, dv]", shape);
        }

        var inputs = new BackwardInputs(query, default, default, default, default, output, outputGradient, logSumExp);
        inputs.Apart(queryGradient, nameof(queryGradient));
        CheckApart(queryGradient, nameof(queryGradient), query, keys, values);
        for (int t = 0; t < gradients.Length; t++)
        {
            string name = t < shape.KeyMatrices ? nameof(keyGradients) : nameof(valueGradients);
            inputs.Apart(gradients[t].Span, name);
            CheckApart(gradients[t].Span, name, query, keys, values);
            FastAttention.Validate.NoOverlap(gradients[t].Span, (ReadOnlySpan<float>)queryGradient, nameof(queryGradient), name);
            for (int u = 0; u < t; u++)
            {
                FastAttention.Validate.NoOverlap(gradients[t].Span, (ReadOnlySpan<float>)gradients[u].Span, "another gradient", name);
            }
        }

        CheckWindowsAndFinite(query, keys, values, shape, options);
        CheckBackwardFinite(output, outputGradient, logSumExp, shape);

        var dq = new double[queryGradient.Length];
        double[][] grads = [.. gradients.Select(g => new double[g.Length])];
        ReferenceTensorAttention.Backward(query, keys, values, outputGradient, shape, dq, [.. grads.Take(shape.KeyMatrices).Select(g => (Memory<double>)g)],
            [.. grads.Skip(shape.KeyMatrices).Select(g => (Memory<double>)g)], options);
        Narrow(dq, queryGradient);
        for (int t = 0; t < gradients.Length; t++)
        {
            Narrow(grads[t], gradients[t].Span);
        }

        return new AttentionRun("tensor-backward-tuples", FlopCount.TensorAttentionBackward(shape, options));
    }

    /// <summary>The order-3 backward's checks, in the validator's order: shape and input lengths, gradient lengths, overlaps, windows and finiteness.</summary>
    private static void Check3(ReadOnlySpan<float> query, ReadOnlyMemory<float>[] keys, ReadOnlyMemory<float>[] values, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> logSumExp, TensorAttentionShape shape, Span<float> queryGradient, Span<float> key1Gradient, Span<float> key2Gradient, Span<float> value1Gradient,
        Span<float> value2Gradient, TensorAttentionOptions options)
    {
        ReadOnlySpan<float> key1 = keys[0].Span, key2 = keys[1].Span, value1 = values[0].Span, value2 = values[1].Span;
        CheckInputs(query, keys, values, shape);
        CheckBackwardLengths(output, outputGradient, logSumExp, shape);
        FastAttention.Validate.Length(queryGradient.Length, shape.QueryLength, nameof(queryGradient), "[h, nq, d]", shape);
        FastAttention.Validate.Length(key1Gradient.Length, shape.KeyLength, nameof(key1Gradient), "[h, nk, d]", shape);
        FastAttention.Validate.Length(key2Gradient.Length, shape.KeyLength, nameof(key2Gradient), "[h, nk, d]", shape);
        FastAttention.Validate.Length(value1Gradient.Length, shape.ValueLength, nameof(value1Gradient), "[h, nk, dv]", shape);
        FastAttention.Validate.Length(value2Gradient.Length, shape.ValueLength, nameof(value2Gradient), "[h, nk, dv]", shape);
        var inputs = new BackwardInputs(query, key1, key2, value1, value2, output, outputGradient, logSumExp);
        inputs.Apart(queryGradient, nameof(queryGradient));
        inputs.Apart(key1Gradient, nameof(key1Gradient));
        inputs.Apart(key2Gradient, nameof(key2Gradient));
        inputs.Apart(value1Gradient, nameof(value1Gradient));
        inputs.Apart(value2Gradient, nameof(value2Gradient));
        Apart(key1Gradient, nameof(key1Gradient), queryGradient, nameof(queryGradient));
        Apart(key2Gradient, nameof(key2Gradient), queryGradient, nameof(queryGradient));
        Apart(key2Gradient, nameof(key2Gradient), key1Gradient, nameof(key1Gradient));
        Apart(value1Gradient, nameof(value1Gradient), queryGradient, nameof(queryGradient));
        Apart(value1Gradient, nameof(value1Gradient), key1Gradient, nameof(key1Gradient));
        Apart(value1Gradient, nameof(value1Gradient), key2Gradient, nameof(key2Gradient));
        Apart(value2Gradient, nameof(value2Gradient), queryGradient, nameof(queryGradient));
        Apart(value2Gradient, nameof(value2Gradient), key1Gradient, nameof(key1Gradient));
        Apart(value2Gradient, nameof(value2Gradient), key2Gradient, nameof(key2Gradient));
        Apart(value2Gradient, nameof(value2Gradient), value1Gradient, nameof(value1Gradient));
        CheckWindowsAndFinite(query, keys, values, shape, options);
        CheckBackwardFinite(output, outputGradient, logSumExp, shape);
    }

    /// <summary>One head on the vector width <paramref name="width"/> (v512, v256 or scalar).</summary>
    private static void RunHead(string width, in TensorBackwardHead head, int nq, int nk, int d, int dv, float scale, Func<int, (int, int, int, int)> ranges, int threads, TensorBackwardBuffers buffers)
    {
        if (width == "v512")
        {
            TensorBackwardKernel<Simd512, Vector512<float>>.Run(head, nq, nk, d, dv, scale, ranges, threads, buffers);
        }
        else if (width == "v256")
        {
            TensorBackwardKernel<Simd256, Vector256<float>>.Run(head, nq, nk, d, dv, scale, ranges, threads, buffers);
        }
        else
        {
            TensorBackwardKernel<SimdScalar, float>.Run(head, nq, nk, d, dv, scale, ranges, threads, buffers);
        }
    }

    private static void Apart(Span<float> gradient, string name, Span<float> other, string otherName) =>
        FastAttention.Validate.NoOverlap(gradient, (ReadOnlySpan<float>)other, otherName, name);

    /// <summary>D_i = dO_i . O_i per row, accumulated in double (the backward's pre-pass).</summary>
    private static float[] RowDots(ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, int dv)
    {
        var dots = new float[output.Length / dv];
        for (int row = 0; row < dots.Length; row++)
        {
            double sum = 0;
            for (int c = 0; c < dv; c++)
            {
                sum += (double)output[(row * dv) + c] * outputGradient[(row * dv) + c];
            }

            dots[row] = (float)sum;
        }

        return dots;
    }

    private static void CheckBackwardLengths(ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, TensorAttentionShape shape)
    {
        FastAttention.Validate.Length(output.Length, shape.OutputLength, nameof(output), "[h, nq, dv]", shape);
        FastAttention.Validate.Length(outputGradient.Length, shape.OutputLength, nameof(outputGradient), "[h, nq, dv]", shape);
        FastAttention.Validate.Length(logSumExp.Length, (long)shape.HeadCount * shape.QueryCount, nameof(logSumExp), "[h, nq]", shape);
    }

    /// <summary>dO and O finite; the log-sum-exp finite or -inf (a query that sees nothing).</summary>
    private static void CheckBackwardFinite(ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp, TensorAttentionShape shape)
    {
        FiniteCheck.Require(outputGradient, nameof(outputGradient), shape.ValueDim, GradientWhy);
        FiniteCheck.Require(output, nameof(output), shape.ValueDim, "Pass the output the forward returned.");
        FastAttention.Validate.LogSumExp(logSumExp);
    }

    private static void Narrow(ReadOnlySpan<double> source, Span<float> target)
    {
        for (int x = 0; x < source.Length; x++)
        {
            target[x] = (float)source[x];
        }
    }

    /// <summary>The spans a gradient must not overlap (empty ones overlap nothing).</summary>
    private readonly ref struct BackwardInputs(ReadOnlySpan<float> query, ReadOnlySpan<float> key1, ReadOnlySpan<float> key2, ReadOnlySpan<float> value1, ReadOnlySpan<float> value2,
        ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient, ReadOnlySpan<float> logSumExp)
    {
        private readonly ReadOnlySpan<float> _query = query, _key1 = key1, _key2 = key2, _value1 = value1, _value2 = value2, _output = output, _outputGradient = outputGradient, _logSumExp = logSumExp;

        public void Apart(Span<float> gradient, string name)
        {
            FastAttention.Validate.NoOverlap(gradient, _query, nameof(query), name);
            FastAttention.Validate.NoOverlap(gradient, _key1, nameof(key1), name);
            FastAttention.Validate.NoOverlap(gradient, _key2, nameof(key2), name);
            FastAttention.Validate.NoOverlap(gradient, _value1, nameof(value1), name);
            FastAttention.Validate.NoOverlap(gradient, _value2, nameof(value2), name);
            FastAttention.Validate.NoOverlap(gradient, _output, nameof(output), name);
            FastAttention.Validate.NoOverlap(gradient, _outputGradient, nameof(outputGradient), name);
            FastAttention.Validate.NoOverlap(gradient, _logSumExp, nameof(logSumExp), name);
        }
    }
}
