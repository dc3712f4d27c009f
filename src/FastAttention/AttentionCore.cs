using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using FastAttention.Kernels;

namespace FastAttention;

/// <summary>Validation and dispatch shared by <see cref="ExactAttention"/> and <see cref="PowerAttention"/>.</summary>
internal static unsafe partial class AttentionCore
{
    /// <summary>Options after defaults are resolved.</summary>
    internal readonly record struct Settings(
        float? Scale,
        float DefaultScaleExponent,
        bool Causal,
        ReadOnlyMemory<float> Bias,
        ReadOnlyMemory<bool> Mask,
        int MaxDegreeOfParallelism,
        bool AllowNonFinite,
        string? Kernel,
        float Power,
        int Window = 0,
        int Sinks = 0);

    public static AttentionRun Run(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, in Settings settings) =>
        Run(query, key, value, shape, destination, default, false, settings);

    /// <summary>Runs attention; with <paramref name="withLogSumExp"/>, <paramref name="logSumExp"/> receives each row's log-sum-exp in base e, <c>[batch, heads, nq]</c>.</summary>
    public static AttentionRun Run(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination, Span<float> logSumExp, bool withLogSumExp, in Settings settings)
    {
        // Validation order: shape, input lengths, destination, overlap, options, values.
        Validate.Attention(query, key, value, shape, destination);
        if (withLogSumExp)
        {
            LogSumExp.Check(logSumExp, query, key, value, destination, shape);
        }


        float scale = ResolveScale(settings, shape);
        CheckBroadcast(settings, shape);

        if (!settings.AllowNonFinite)
        {
            // K and V are checked here unless the kernel checks them in cache (decoding reads them once).
            CheckFinite(query, nameof(query), shape.HeadDim);
            CheckBiasNotNaN(settings);
        }

        AttentionKernel kernel;
        float[]? statistics = withLogSumExp ? new float[2 * logSumExp.Length] : null;
        long* firstNonFinite = stackalloc long[2] { long.MaxValue, long.MaxValue };
        fixed (float* q = query)
        fixed (float* k = key)
        fixed (float* v = value)
        fixed (float* o = destination)
        fixed (float* bias = settings.Bias.Span)
        fixed (bool* mask = settings.Mask.Span)
        fixed (float* stats = statistics)
        {
            AttentionArgs args = Arguments(shape, settings, scale, q, KvOperand.Float32(k, shape.KeyCount, shape.HeadDim), KvOperand.Float32(v, shape.KeyCount, shape.ValueDim),
                o, bias, mask, stats);
            kernel = KernelRegistry.Select(settings.Kernel, in args);
            if (!settings.AllowNonFinite)
            {
                if (kernel.ChecksFinite)
                {
                    args.FirstNonFinite = firstNonFinite;
                }
                else
                {
                    CheckFinite(key, nameof(key), shape.HeadDim);
                    CheckFinite(value, nameof(value), shape.ValueDim);
                }
            }

            kernel.Run(args);
        }

        // A kernel that checked in cache reports the first offending element; the destination is then undefined.
        if (firstNonFinite[0] != long.MaxValue)
        {
            CheckFinite(key, nameof(key), shape.HeadDim);
        }

        if (firstNonFinite[1] != long.MaxValue)
        {
            CheckFinite(value, nameof(value), shape.ValueDim);
        }

        if (!settings.AllowNonFinite)
        {
            FiniteCheck.RequireFiniteResult(destination, shape.ValueDim, scale);
        }

        if (statistics is not null)
        {
            LogSumExp.FromRowStatistics(statistics, logSumExp);
        }

        return new AttentionRun(kernel.Name, FlopCount.ExactAttention(
            shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, settings.Causal, settings.Window, settings.Sinks));
    }

    /// <summary>
    /// Runs attention on keys and values in a storage type (<see cref="KvTensor"/>); the run carries the storage's error bound
    /// (<see cref="KvErrorBound"/>; zero for float32). Keys and values must share one type.
    /// </summary>
    public static AttentionRun Run(ReadOnlySpan<float> query, KvTensor key, KvTensor value, AttentionShape shape, Span<float> destination, Span<float> logSumExp, bool withLogSumExp,
        in Settings settings)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        Validate.Shape(shape);
        Validate.Length(query.Length, shape.QueryLength, nameof(query), Validate.QueryLayout, shape);
        Validate.Length(key.Length, shape.KeyLength, nameof(key), Validate.KeyLayout, shape);
        Validate.Length(value.Length, shape.ValueLength, nameof(value), Validate.ValueLayout, shape);
        if (key.RowLength != shape.HeadDim || value.RowLength != shape.ValueDim)
        {
            Validate.Fail(key.RowLength != shape.HeadDim ? nameof(key) : nameof(value), "the row length does not match the shape",
                $"key rows of {key.RowLength}, value rows of {value.RowLength}", $"d = {shape.HeadDim}, dv = {shape.ValueDim}", "build the KvTensor with rowLength = d (keys) or dv (values)");
        }

        if (key.ElementType != value.ElementType)
        {
            Validate.Fail(nameof(value), "keys and values are stored in different types", $"key {KvElementTypes.Name(key.ElementType)}, value {KvElementTypes.Name(value.ElementType)}",
                "one type for both", "encode keys and values with the same KvElementType");
        }

        Validate.Length(destination.Length, shape.OutputLength, nameof(destination), Validate.OutputLayout, shape);
        Validate.NoOverlap(destination, query, nameof(query));
        key.CheckApart(destination, nameof(key), nameof(destination));
        value.CheckApart(destination, nameof(value), nameof(destination));
        if (withLogSumExp)
        {
            Validate.Length(logSumExp.Length, (long)shape.BatchSize * shape.HeadCount * shape.QueryCount, nameof(logSumExp), "[batch, heads, nq]", shape);
            Validate.NoOverlap(logSumExp, query, nameof(query), nameof(logSumExp));
            key.CheckApart(logSumExp, nameof(key), nameof(logSumExp));
            value.CheckApart(logSumExp, nameof(value), nameof(logSumExp));
            Validate.NoOverlap(logSumExp, (ReadOnlySpan<float>)destination, nameof(destination), nameof(logSumExp));
        }

        float scale = ResolveScale(settings, shape);
        CheckBroadcast(settings, shape);
        if (!settings.AllowNonFinite)
        {
            CheckFinite(query, nameof(query), shape.HeadDim);
            CheckBiasNotNaN(settings);
        }

        float[]? statistics = withLogSumExp ? new float[2 * logSumExp.Length] : null;
        long* firstNonFinite = stackalloc long[2] { long.MaxValue, long.MaxValue };
        AttentionKernel kernel;
        using (KvTensor.Pinned keys = key.Pin(shape.KeyCount))
        using (KvTensor.Pinned values = value.Pin(shape.KeyCount))
        {
            fixed (float* q = query)
            fixed (float* o = destination)
            fixed (float* bias = settings.Bias.Span)
            fixed (bool* mask = settings.Mask.Span)
            fixed (float* stats = statistics)
            {
                AttentionArgs args = Arguments(shape, settings, scale, q, keys.Operand, values.Operand, o, bias, mask, stats);
                kernel = KernelRegistry.Select(settings.Kernel, in args);
                if (!settings.AllowNonFinite)
                {
                    if (kernel.ChecksFinite)
                    {
                        args.FirstNonFinite = firstNonFinite;
                    }
                    else
                    {
                        CheckFinite(key, nameof(key));
                        CheckFinite(value, nameof(value));
                    }
                }

                kernel.Run(args);
            }
        }

        if (firstNonFinite[0] != long.MaxValue)
        {
            CheckFinite(key, nameof(key));
        }

        if (firstNonFinite[1] != long.MaxValue)
        {
            CheckFinite(value, nameof(value));
        }

        if (!settings.AllowNonFinite)
        {
            FiniteCheck.RequireFiniteResult(destination, shape.ValueDim, scale);
        }

        if (statistics is not null)
        {
            LogSumExp.FromRowStatistics(statistics, logSumExp);
        }

        return new AttentionRun(kernel.Name, FlopCount.ExactAttention(
            shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, settings.Causal, settings.Window, settings.Sinks))
        {
            KvBound = StorageBound(query, key, value, shape, scale),
        };
    }

    /// <summary>The storage error bound of a call (see <see cref="KvErrorBound"/>): zero for float32 keys and values.</summary>
    internal static KvErrorBound StorageBound(ReadOnlySpan<float> query, KvTensor key, KvTensor value, AttentionShape shape, float scale)
    {
        if (key.ElementType == KvElementType.Float32 && value.ElementType == KvElementType.Float32)
        {
            return KvErrorBound.FromScoreError(key.ElementType, value.ElementType, 0, 0, 0);
        }

        (double[] keyErrors, _) = key.ErrorProfile(shape.KeyCount);
        (double[] valueErrors, double maxAbs) = value.ErrorProfile(shape.KeyCount);
        return KvErrorBound.Of(query, shape, scale, keyErrors, valueErrors.Length == 0 ? 0 : valueErrors.Max(), maxAbs, key.ElementType, value.ElementType);
    }

    /// <summary>The kernel arguments of a call: shape, pinned operands, scale and the settings' masking and threads.</summary>
    internal static AttentionArgs Arguments(AttentionShape shape, in Settings settings, float scale, float* q, KvOperand keys, KvOperand values, float* o, float* bias, bool* mask, float* stats)
    {
        long block = (long)shape.QueryCount * shape.KeyCount;
        (long biasBatch, long biasHead) = BroadcastStrides(settings.Bias.Length, block, shape, "Bias");
        (long maskBatch, long maskHead) = BroadcastStrides(settings.Mask.Length, block, shape, "Mask");
        AttentionArgs args = AttentionArgs.FromShape(shape);
        args.Query = q;
        args.KeyStore = keys;
        args.ValueStore = values;
        args.Key = keys.IsContiguousFloat32 ? (float*)keys.Data : null;
        args.Value = values.IsContiguousFloat32 ? (float*)values.Data : null;
        args.Output = o;
        args.Bias = settings.Bias.IsEmpty ? null : bias;
        args.Mask = settings.Mask.IsEmpty ? null : mask;
        args.BiasBatchStride = biasBatch;
        args.BiasHeadStride = biasHead;
        args.MaskBatchStride = maskBatch;
        args.MaskHeadStride = maskHead;
        args.Scale = scale;
        args.Causal = settings.Causal;
        args.Power = settings.Power;
        args.MaxDegreeOfParallelism = settings.MaxDegreeOfParallelism;
        args.RowStats = stats;
        args.Window = settings.Window;
        args.Sinks = settings.Sinks;
        return args;
    }

    /// <summary>Bias and mask lengths are checked before any work (the strides are recomputed when the arguments are built).</summary>
    private static void CheckBroadcast(in Settings settings, AttentionShape shape)
    {
        CheckWindow(settings);
        long block = (long)shape.QueryCount * shape.KeyCount;
        BroadcastStrides(settings.Bias.Length, block, shape, "Bias");
        BroadcastStrides(settings.Mask.Length, block, shape, "Mask");
    }

    /// <summary>A window and sinks of 0 or more; sinks only with a window.</summary>
    internal static void CheckWindow(in Settings settings)
    {
        if (settings.Window < 0 || settings.Sinks < 0)
        {
            Validate.Fail("options", "the window and the sinks cannot be negative", $"Window {settings.Window}, Sinks {settings.Sinks}", "0 or more", "Window 0 means no window");
        }

        if (settings.Sinks > 0 && settings.Window == 0)
        {
            Validate.Fail("options", "sinks are kept beside a sliding window, and there is none", $"Window 0, Sinks {settings.Sinks}", "a Window > 0 with the Sinks",
                "without a window every key is visible already");
        }
    }

    private static float ResolveScale(in Settings settings, AttentionShape shape)
    {
        float scale = settings.Scale ?? MathF.Pow(shape.HeadDim, settings.DefaultScaleExponent);
        return float.IsFinite(scale) ? scale : throw new ArgumentOutOfRangeException("options", scale, "Scale must be a finite number.");
    }

    private static void CheckFinite(KvTensor tensor, string name)
    {
        long at = tensor.FirstNonFinite();
        if (at >= 0)
        {
            throw new ArgumentException(
                $"{name} contains a non-finite {KvElementTypes.Name(tensor.ElementType)} value at [{at / tensor.RowLength}, {at % tensor.RowLength}] (flat index {at}). " +
                "Non-finite inputs are rejected by default; set AllowNonFinite to let them propagate.", name);
        }
    }

    /// <summary>The tensor-span overload: ranks 2, 3 or 4 read as [n, d], [h, n, d] or [b, h, n, d].</summary>
    public static AttentionRun Run(ReadOnlyTensorSpan<float> query, ReadOnlyTensorSpan<float> key, ReadOnlyTensorSpan<float> value, TensorSpan<float> destination, in Settings settings)
    {
        int[] q = Dims(query.Lengths, nameof(query));
        int[] k = Dims(key.Lengths, nameof(key));
        int[] v = Dims(value.Lengths, nameof(value));
        int[] o = Dims(destination.Lengths, nameof(destination));
        if (k[0] != q[0] || v[0] != q[0] || o[0] != q[0])
        {
            Validate.Fail(nameof(key), "batch sizes differ", $"query {Show(q)}, key {Show(k)}, value {Show(v)}, destination {Show(o)}", $"batch {q[0]} everywhere",
                "every tensor is [batch, heads, n, d] with the same batch");
        }

        if (v[1] != k[1] || v[2] != k[2])
        {
            Validate.Fail(nameof(value), "the value shape does not match the key shape in heads and keys", $"value {Show(v)}, key {Show(k)}",
                $"[{k[0]}, {k[1]}, {k[2]}, dv]", "keys and values come in pairs: one value row per key row");
        }

        if (o[1] != q[1] || o[2] != q[2] || o[3] != v[3])
        {
            Validate.Fail(nameof(destination), "the destination shape does not match", Show(o), Show([q[0], q[1], q[2], v[3]]), "the output has the query's shape with the value's last dimension");
        }

        if (k[3] != q[3])
        {
            Validate.Fail(nameof(key), "the query and key shapes differ in head dimension", $"query {Show(q)}, key {Show(k)}", $"d = {q[3]} in both", "queries and keys are dotted: their last dimensions must agree");
        }

        var shape = new AttentionShape(q[0], q[1], q[2], k[2], q[3], v[3], k[1]);
        ReadOnlySpan<float> qs = Flat(query);
        ReadOnlySpan<float> ks = Flat(key);
        ReadOnlySpan<float> vs = Flat(value);
        if (IsCOrder(destination.Lengths, destination.Strides))
        {
            Span<float> os = MemoryMarshal.CreateSpan(ref destination.GetPinnableReference(), checked((int)destination.FlattenedLength));
            return Run(qs, ks, vs, shape, os, settings);
        }

        float[] temporary = new float[destination.FlattenedLength];
        AttentionRun run = Run(qs, ks, vs, shape, temporary, settings);
        new ReadOnlyTensorSpan<float>(temporary, destination.Lengths).CopyTo(destination);
        return run;
    }

    private static ReadOnlySpan<float> Flat(ReadOnlyTensorSpan<float> tensor)
    {
        if (IsCOrder(tensor.Lengths, tensor.Strides))
        {
            return MemoryMarshal.CreateReadOnlySpan(in tensor.GetPinnableReference(), checked((int)tensor.FlattenedLength));
        }

        float[] copy = new float[tensor.FlattenedLength];
        tensor.FlattenTo(copy);
        return copy;
    }

    private static bool IsCOrder(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        nint expected = 1;
        for (int a = lengths.Length - 1; a >= 0; a--)
        {
            if (lengths[a] != 1 && strides[a] != expected)
            {
                return false;
            }

            expected *= lengths[a];
        }

        return true;
    }

    private static int[] Dims(ReadOnlySpan<nint> lengths, string name)
    {
        if (lengths.Length is < 2 or > 4)
        {
            Validate.Fail(name, "unsupported rank", $"rank {lengths.Length}", "rank 2, 3 or 4", "pass [n, d], [heads, n, d] or [batch, heads, n, d]");
        }

        int[] dims = [1, 1, 1, 1];
        for (int a = 0; a < lengths.Length; a++)
        {
            dims[4 - lengths.Length + a] = checked((int)lengths[a]);
        }

        return dims;
    }

    private static string Show(int[] dims) => TensorData.FormatShape(dims);

    private static (long Batch, long Head) BroadcastStrides(int length, long block, AttentionShape shape, string name)
    {
        if (length == 0)
        {
            return (0, 0);
        }

        if (length == block)
        {
            return (0, 0);
        }

        if (length == block * shape.HeadCount)
        {
            return (0, block);
        }

        if (length == block * shape.HeadCount * shape.BatchSize)
        {
            return (block * shape.HeadCount, block);
        }

        throw new ArgumentException(
            $"{name} has {length} elements; expected [nq, nk] = {block}, [heads, nq, nk] = {block * shape.HeadCount} or [batch, heads, nq, nk] = {block * shape.HeadCount * shape.BatchSize}.",
            "options");
    }

    /// <summary>-infinity masks; NaN in the bias is an error unless non-finite values may propagate.</summary>
    private static void CheckBiasNotNaN(in Settings settings)
    {
        if (TensorPrimitives.IsNaNAny(settings.Bias.Span))
        {
            throw new ArgumentException($"Bias contains NaN at index {settings.Bias.Span.IndexOf(float.NaN)}; use -infinity to mask, or set AllowNonFinite to propagate.", "options");
        }
    }

    private static void CheckFinite(ReadOnlySpan<float> values, string name, int rowLength) =>
        FiniteCheck.Require(values, name, rowLength, "Non-finite inputs are rejected by default; set AllowNonFinite to let them propagate.");
}
