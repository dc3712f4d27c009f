using FastAttention.Kernels;

namespace FastAttention;

/// <summary>Validation and dispatch of the exact and power backward passes (docs/algorithms.md §6).</summary>
internal static unsafe partial class AttentionCore
{
    /// <summary>
    /// The backward of <see cref="Run(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, AttentionShape, Span{float}, Span{float}, bool, in Settings)"/>:
    /// dQ, dK, dV (and dBias when <paramref name="biasGradient"/> is not empty) from dO, the forward's output and its log-sum-exp.
    /// </summary>
    public static AttentionRun Backward(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, ReadOnlySpan<float> output, ReadOnlySpan<float> outputGradient,
        ReadOnlySpan<float> logSumExp, AttentionShape shape, Span<float> queryGradient, Span<float> keyGradient, Span<float> valueGradient, Span<float> biasGradient, bool withBiasGradient,
        in Settings settings)
    {
        // Validation order: shape, input lengths, gradient lengths, overlap, options, values.
        Validate.Backward(query, key, value, output, outputGradient, logSumExp, shape, queryGradient, keyGradient, valueGradient);
        long block = (long)shape.QueryCount * shape.KeyCount;
        if (withBiasGradient)
        {
            long expected = settings.Bias.IsEmpty ? BroadcastLength(biasGradient.Length, block, shape) : settings.Bias.Length;
            Validate.Length(biasGradient.Length, expected, nameof(biasGradient), settings.Bias.IsEmpty ? "[nq, nk], [heads, nq, nk] or [batch, heads, nq, nk]" : "the bias's layout", shape);
            Validate.GradientOverlap(biasGradient, nameof(biasGradient), query, key, value, output, outputGradient, logSumExp);
            Validate.NoOverlap(biasGradient, (ReadOnlySpan<float>)queryGradient, nameof(queryGradient), nameof(biasGradient));
            Validate.NoOverlap(biasGradient, (ReadOnlySpan<float>)keyGradient, nameof(keyGradient), nameof(biasGradient));
            Validate.NoOverlap(biasGradient, (ReadOnlySpan<float>)valueGradient, nameof(valueGradient), nameof(biasGradient));
        }

        if (settings.Window != 0 || settings.Sinks != 0)
        {
            Validate.Fail("options", "the backward pass has no sliding window", $"Window {settings.Window}, Sinks {settings.Sinks}", "Window 0 and Sinks 0",
                "a windowed forward is inference only here; train with a causal mask, or pass the window as a boolean Mask");
        }

        // The gradients are written while the bias and mask are read: they must not share memory with them either.
        ApartFromOptions(queryGradient, nameof(queryGradient), settings);
        ApartFromOptions(keyGradient, nameof(keyGradient), settings);
        ApartFromOptions(valueGradient, nameof(valueGradient), settings);
        ApartFromOptions(biasGradient, nameof(biasGradient), settings);

        long full = block * shape.HeadCount * shape.BatchSize;
        if (withBiasGradient && biasGradient.Length != full && full > Array.MaxLength)
        {
            Validate.Fail(nameof(biasGradient), "a broadcast bias gradient needs a [batch, heads, nq, nk] scratch larger than one array can hold", $"{full} elements ({shape})",
                $"at most {Array.MaxLength}", "pass a [batch, heads, nq, nk] bias gradient (written in place), or split the batch or the heads into several calls");
        }

        float scale = settings.Scale ?? MathF.Pow(shape.HeadDim, settings.DefaultScaleExponent);
        if (!float.IsFinite(scale))
        {
            throw new ArgumentOutOfRangeException("options", scale, "Scale must be a finite number.");
        }

        (long biasBatch, long biasHead) = BroadcastStrides(settings.Bias.Length, block, shape, "Bias");
        (long maskBatch, long maskHead) = BroadcastStrides(settings.Mask.Length, block, shape, "Mask");
        BackwardKernel kernel = KernelRegistry.SelectBackward(settings.Kernel);

        if (!settings.AllowNonFinite)
        {
            CheckFinite(query, nameof(query), shape.HeadDim);
            CheckFinite(key, nameof(key), shape.HeadDim);
            CheckFinite(value, nameof(value), shape.ValueDim);
            CheckFinite(output, nameof(output), shape.ValueDim);
            FiniteCheck.Require(outputGradient, nameof(outputGradient), shape.ValueDim,
                "Non-finite output gradients are rejected by default; set AllowNonFinite to let them propagate.");
            Validate.LogSumExp(logSumExp);
            CheckBiasNotNaN(settings);
        }

        // The kernel writes dS per (b, h, i, j); a broadcast bias's gradient sums it over the broadcast axes afterwards, in a fixed order.
        bool direct = withBiasGradient && biasGradient.Length == full;
        float[]? scores = withBiasGradient && !direct ? new float[full] : null;
        fixed (float* q = query)
        fixed (float* k = key)
        fixed (float* v = value)
        fixed (float* o = output)
        fixed (float* dO = outputGradient)
        fixed (float* lse = logSumExp)
        fixed (float* dq = queryGradient)
        fixed (float* dk = keyGradient)
        fixed (float* dv = valueGradient)
        fixed (float* dBias = biasGradient)
        fixed (float* dScores = scores)
        fixed (float* bias = settings.Bias.Span)
        fixed (bool* mask = settings.Mask.Span)
        {
            if (direct)
            {
                biasGradient.Clear();
            }

            BackwardArgs args = default;
            args.Forward = AttentionArgs.FromShape(shape);
            args.Forward.Query = q;
            args.Forward.Key = k;
            args.Forward.Value = v;
            args.Forward.Output = o;
            args.Forward.Bias = settings.Bias.IsEmpty ? null : bias;
            args.Forward.Mask = settings.Mask.IsEmpty ? null : mask;
            args.Forward.BiasBatchStride = biasBatch;
            args.Forward.BiasHeadStride = biasHead;
            args.Forward.MaskBatchStride = maskBatch;
            args.Forward.MaskHeadStride = maskHead;
            args.Forward.Scale = scale;
            args.Forward.Causal = settings.Causal;
            args.Forward.Power = settings.Power;
            args.Forward.MaxDegreeOfParallelism = settings.MaxDegreeOfParallelism;
            args.OutputGradient = dO;
            args.LogSumExp = lse;
            args.QueryGradient = dq;
            args.KeyGradient = dk;
            args.ValueGradient = dv;
            args.ScoreGradient = direct ? dBias : dScores;
            kernel.Run(args);
        }

        if (scores is not null)
        {
            SumOverBroadcast(scores, biasGradient, block, shape);
        }

        if (!settings.AllowNonFinite)
        {
            FiniteCheck.RequireFiniteResult(queryGradient, shape.HeadDim, scale);
            FiniteCheck.RequireFiniteResult(keyGradient, shape.HeadDim, scale);
            FiniteCheck.RequireFiniteResult(valueGradient, shape.ValueDim, scale);
        }

        return new AttentionRun(kernel.Name, FlopCount.ExactAttentionBackward(
            shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, settings.Causal));
    }

    private static void ApartFromOptions(Span<float> gradient, string name, in Settings settings)
    {
        Validate.NoOverlap(gradient, settings.Bias.Span, "options.Bias", name);
        Validate.NoOverlap(gradient, settings.Mask.Span, "options.Mask", name);
    }

    /// <summary>A bias gradient's length when no bias fixes it: one of the bias's broadcast layouts (else a length no layout has, so the check fails).</summary>
    private static long BroadcastLength(int length, long block, AttentionShape shape) =>
        length == block || length == block * shape.HeadCount || length == block * shape.HeadCount * shape.BatchSize ? length : block * shape.HeadCount * shape.BatchSize;

    /// <summary>dBias = dS summed over the axes the bias broadcasts along, (b, h) in order.</summary>
    private static void SumOverBroadcast(float[] scores, Span<float> biasGradient, long block, AttentionShape shape)
    {
        biasGradient.Clear();
        int planes = shape.BatchSize * shape.HeadCount;
        for (int bh = 0; bh < planes; bh++)
        {
            int target = biasGradient.Length == block ? 0 : bh % shape.HeadCount;
            ReadOnlySpan<float> source = scores.AsSpan(checked((int)(bh * block)), checked((int)block));
            Span<float> destination = biasGradient.Slice(checked((int)(target * block)), checked((int)block));
            System.Numerics.Tensors.TensorPrimitives.Add(destination, source, destination);
        }
    }
}
