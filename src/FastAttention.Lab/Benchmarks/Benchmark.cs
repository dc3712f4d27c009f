using System.Diagnostics;
using System.Numerics.Tensors;
using FastAttention.Leverage;

namespace FastAttention.Lab;

/// <summary>
/// The benchmarking API that <c>fastattn bench</c> and the report call: warm-up, then the median of repeated runs,
/// with the method's own GFLOP/s (and, for approximate methods, the exact-equivalent rate), %-of-peak against the FMA
/// peak measured in the same run, and optionally the input read rate against a read of the same inputs.
/// </summary>
public static class Benchmark
{
    /// <summary>Times <paramref name="request"/>'s method.</summary>
    /// <param name="request">Method, shape, settings, inputs, repeats.</param>
    /// <param name="progress">Progress and cancellation (each timed run is a cancellation point).</param>
    /// <returns>The measurement.</returns>
    /// <exception cref="ArgumentException">Unknown method, inputs that do not match the shape, settings the method rejects (<see cref="MethodEntry.WhyNot"/>),
    /// or <see cref="BenchmarkRequest.Backward"/> for a method without a backward.</exception>
    public static BenchmarkResult Run(BenchmarkRequest request, LabProgress? progress = null)
    {
        ArgumentNullException.ThrowIfNull(request);
        progress ??= LabProgress.None;
        MethodEntry method = MethodTable.Find(request.Method);
        AttentionShape shape = request.Shape;
        int threads = request.Settings.Threads > 0 ? request.Settings.Threads : Environment.ProcessorCount;
        MethodSettings settings = request.Settings with { Threads = threads };
        if (method.WhyNot(settings) is string reason)
        {
            throw new ArgumentException($"{method.Name}: {reason}", nameof(request));
        }

        MethodBackward? training = !request.Backward ? null
            : method.Backward ?? throw new ArgumentException(MethodTable.NoBackward(method.Name), nameof(request));
        MethodInputs inputs = request.Inputs ?? RandomInputs(shape, method.IsTensor, request.InputSeed);
        StoredKv? stored = request.KvType is KvElementType type ? StoredKv.Of(request, method, inputs, type) : null;
        KvErrorBound? bound = null;
        float[] output = new float[shape.OutputLength], outputGradient = training is null ? [] : Uniform(new Random(request.InputSeed + 13), shape.OutputLength);
        MethodGradients? pair = null;
        var backwardTimes = new List<double>();

        MethodRun Compute()
        {
            if (stored is not null)
            {
                AttentionRun typed = ExactAttention.Compute(inputs.Query.Span, stored.Keys, stored.Values, shape, output, MethodTable.ExactOptions(settings));
                bound = typed.KvBound;
                return new MethodRun(typed.Kernel);
            }

            if (training is null)
            {
                return method.Forward(inputs, shape, output, settings);
            }

            pair = training(inputs, shape, outputGradient, settings);
            backwardTimes.Add(pair.BackwardSeconds);
            return pair.Run;
        }

        var watch = Stopwatch.StartNew();
        MethodRun run = Compute();
        double first = watch.Elapsed.TotalSeconds;
        backwardTimes.Clear(); // the warm-up's
        int runs = request.Repeats ?? (int)Math.Clamp(2.0 / Math.Max(first, 1e-6), 3, 50);
        double[] times = TimedRuns.Repeat(() => run = Compute(), runs, progress, "timing " + method.Name + (training is null ? string.Empty : " forward + backward"));
        double median = TimedRuns.Median(times);
        double flops = pair?.Flops ?? method.Flops(shape, settings, run);
        double? exactFlops = method.ExactEquivalentFlops?.Invoke(shape, settings, run)
            + (pair is null ? 0 : FlopCount.ExactAttentionBackward(shape.BatchSize, shape.HeadCount, shape.QueryCount, shape.KeyCount, shape.HeadDim, shape.ValueDim, settings.Causal));
        progress.Step("measuring the FMA peak");
        double peak = FmaPeak.Measure(threads);
        BackwardFigure? backward = null;
        if (pair is not null)
        {
            output = pair.Output;
            backwardTimes.Sort();
            backward = new BackwardFigure(TimedRuns.Median(backwardTimes), backwardTimes[0], pair.ForwardFlops, pair.BackwardFlops, peak, pair.BackwardKernel);
        }

        double inputBytes = stored is not null ? (4.0 * inputs.Query.Length) + stored.Bytes
            : 4.0 * (inputs.Query.Length + inputs.Keys.Sum(k => (double)k.Length) + inputs.Values.Sum(v => (double)v.Length));
        BandwidthFigure? bandwidth = null;
        if (request.MeasureBandwidth)
        {
            double plain;
            if (stored is not null)
            {
                // The same bytes the typed call reads: the float32 queries and the keys and values as stored (q8: values and scales).
                Array[] arrays = [inputs.Query.ToArray(), .. stored.Arrays];
                plain = TimedRuns.Median(TimedRuns.Repeat(() => MemoryBandwidth.ReadBytes(arrays, threads), runs, progress, "reading the stored inputs"));
            }
            else
            {
                ReadOnlyMemory<float>[] arrays = [inputs.Query, .. inputs.Keys, .. inputs.Values];
                plain = TimedRuns.Median(TimedRuns.Repeat(() => PlainRead(arrays, threads), runs, progress, "reading the inputs"));
            }

            progress.Step("measuring the machine's read bandwidth (1 GiB, all cores)");
            bandwidth = BandwidthFigure.Of(inputBytes, median, plain) with { MachineReadGBps = MemoryBandwidth.Measure() };
        }

        return new BenchmarkResult(method.Name, run.Kernel, shape, settings.Causal, threads, runs, first, median, times[0], flops, exactFlops, peak,
            inputBytes, bandwidth, Process.GetCurrentProcess().PeakWorkingSet64, run, output, MachineStamp.Now())
        {
            Backward = backward,
            Kv = stored is null ? null : new KvFigure(stored.Keys.ElementType, stored.Bytes, 8 * stored.Bytes / Math.Max(1, (double)stored.Keys.Length + stored.Values.Length), bound),
        };
    }

    /// <summary>
    /// Keys and values in a storage type, wrapped around arrays this benchmark holds, so the plain read can sum the very bytes
    /// the typed call reads (a <see cref="KvTensor"/> does not hand out its float16 or bfloat16 storage).
    /// </summary>
    private sealed record StoredKv(KvTensor Keys, KvTensor Values, Array[] Arrays)
    {
        public double Bytes => (double)Keys.ByteCount + Values.ByteCount;

        public static StoredKv Of(BenchmarkRequest request, MethodEntry method, MethodInputs inputs, KvElementType type)
        {
            if (method.Name != "exact" || request.Backward)
            {
                throw new ArgumentException($"KvType (keys and values stored as {KvElementTypes.Name(type)}) times the exact forward only, not {method.Name}{(request.Backward ? " with its backward" : string.Empty)}", nameof(request));
            }

            AttentionShape shape = request.Shape;
            if ((request.KvKeys is null) != (request.KvValues is null))
            {
                throw new ArgumentException("KvKeys and KvValues come together: give both or neither", nameof(request));
            }

            KvTensor keys = request.KvKeys ?? KvTensor.Encode(inputs.Keys[0].Span, shape.HeadDim, type);
            KvTensor values = request.KvValues ?? KvTensor.Encode(inputs.Values[0].Span, shape.ValueDim, type);
            if (keys.ElementType != type || values.ElementType != type)
            {
                throw new ArgumentException($"KvKeys and KvValues must be stored as KvType {KvElementTypes.Name(type)}; got {KvElementTypes.Name(keys.ElementType)} and {KvElementTypes.Name(values.ElementType)}", nameof(request));
            }

            (KvTensor k, Array[] kArrays) = Own(keys);
            (KvTensor v, Array[] vArrays) = Own(values);
            return new StoredKv(k, v, [.. kArrays, .. vArrays]);
        }

        /// <summary>The same stored elements, bit for bit, in arrays of ours: widening is exact, so narrowing the widened values back gives the stored ones.</summary>
        private static (KvTensor Tensor, Array[] Arrays) Own(KvTensor tensor)
        {
            switch (tensor.ElementType)
            {
                case KvElementType.Float16:
                {
                    Half[] half = [.. tensor.ToFloat32().Select(x => (Half)x)];
                    return (KvTensor.FromFloat16(half, tensor.RowLength), [half]);
                }

                case KvElementType.BFloat16:
                {
                    ushort[] bits = [.. tensor.ToFloat32().Select(x => (ushort)(BitConverter.SingleToUInt32Bits(x) >> 16))];
                    return (KvTensor.FromBFloat16(bits, tensor.RowLength), [bits]);
                }

                case KvElementType.Q8:
                {
                    sbyte[] q = tensor.Q8Values.ToArray();
                    Half[] scales = tensor.Q8Scales.ToArray();
                    return (KvTensor.FromQ8(q, scales, tensor.RowLength), [q, scales]);
                }

                default:
                {
                    float[] values = tensor.ToFloat32();
                    return (KvTensor.FromFloat32(values, tensor.RowLength), [values]);
                }
            }
        }
    }

    /// <summary>Times <c>C = A B</c> with m = n = k = <paramref name="n"/> on the GEMM the attention kernel's micro-kernel comes from.</summary>
    /// <param name="n">m = n = k.</param>
    /// <param name="threads">Worker threads; 0: all cores.</param>
    /// <param name="seed">Seed of the random matrices.</param>
    /// <param name="repeats">Timed runs; null: about 3 s worth, 3 to 30.</param>
    /// <param name="progress">Progress and cancellation.</param>
    /// <returns>The measurement.</returns>
    public static GemmBenchmarkResult Gemm(int n, int threads, int seed = 1, int? repeats = null, LabProgress? progress = null)
    {
        threads = threads > 0 ? threads : Environment.ProcessorCount;
        var random = new Random(seed);
        float[] a = new float[(long)n * n], b = new float[(long)n * n], c = new float[(long)n * n];
        for (long i = 0; i < a.LongLength; i++)
        {
            a[i] = (random.NextSingle() * 2) - 1;
            b[i] = (random.NextSingle() * 2) - 1;
        }

        void Multiply() => FastAttention.Gemm.Multiply(n, n, n, a, false, b, false, c, 0f, threads);

        double first = TimedRuns.Repeat(Multiply, 1, progress)[0]; // warm-up, and the scale for the repeat count
        int runs = repeats ?? (int)Math.Clamp(3.0 / Math.Max(first, 1e-6), 3, 30);
        double median = TimedRuns.Median(TimedRuns.Repeat(Multiply, runs, progress, "timing the GEMM"));
        return new GemmBenchmarkResult(n, threads, runs, median, FmaPeak.Measure(threads), MachineStamp.Now());
    }

    /// <summary>
    /// Leverage scores of <paramref name="n"/> x <paramref name="d"/> Gaussian keys (fast, sketched, exact) against the Gram
    /// matrix K^T K computed with the project's GEMM, all in the same run.
    /// </summary>
    /// <param name="n">Keys.</param>
    /// <param name="d">Dimension.</param>
    /// <param name="threads">Worker threads; 0: all cores.</param>
    /// <param name="seed">Seed of the keys.</param>
    /// <param name="repeats">Timed runs of each (after a warm-up).</param>
    /// <param name="progress">Progress and cancellation.</param>
    /// <returns>The measurement.</returns>
    public static LeverageBenchmarkResult LeverageScores(int n, int d, int threads, int seed = 1, int repeats = 3, LabProgress? progress = null)
    {
        threads = threads > 0 ? threads : Environment.ProcessorCount;
        var random = new Random(seed);
        float[] keys = new float[(long)n * d];
        SeededGaussian.Fill(random, keys);

        double Time(Action run)
        {
            run(); // warm-up
            return TimedRuns.Median(TimedRuns.Repeat(run, repeats, progress, "timing leverage scores"));
        }

        double gram = Time(() => new GramState(d).AddFast(keys, threads));
        double fast = Time(() => Leverage.LeverageScores.Compute(keys, d, LeverageMethod.Fast, maxDegreeOfParallelism: threads));
        double sketched = Time(() => Leverage.LeverageScores.Compute(keys, d, LeverageMethod.Sketched, maxDegreeOfParallelism: threads));
        double exact = Time(() => Leverage.LeverageScores.Compute(keys, d, LeverageMethod.Exact, maxDegreeOfParallelism: threads));
        return new LeverageBenchmarkResult(n, d, threads, repeats, gram, fast, sketched, exact, MachineStamp.Now());
    }

    /// <summary>Uniform [-1, 1] inputs for <paramref name="shape"/>; tensor methods get a second K and V from the seed + 7.</summary>
    /// <param name="shape">The dimensions.</param>
    /// <param name="tensor">Whether to draw the second key and value tensors.</param>
    /// <param name="seed">The seed.</param>
    /// <returns>The inputs.</returns>
    public static MethodInputs RandomInputs(AttentionShape shape, bool tensor, int seed)
    {
        var random = new Random(seed);
        float[] q = Uniform(random, shape.QueryLength), k = Uniform(random, shape.KeyLength), v = Uniform(random, shape.ValueLength);
        if (!tensor)
        {
            return MethodInputs.Of(q, k, v);
        }

        var extra = new Random(seed + 7);
        return new MethodInputs(q, [k, Uniform(extra, k.Length)], [v, Uniform(extra, v.Length)]);
    }

    private static float[] Uniform(Random random, long count)
    {
        var data = new float[count];
        for (long i = 0; i < count; i++)
        {
            data[i] = (random.NextSingle() * 2) - 1;
        }

        return data;
    }

    /// <summary>Sums every array once, split into one contiguous share per thread: the plain read the method's read rate is compared with.</summary>
    private static void PlainRead(ReadOnlyMemory<float>[] arrays, int threads)
    {
        double total = 0;
        object gate = new();
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            double sum = 0;
            foreach (ReadOnlyMemory<float> array in arrays)
            {
                long share = (array.Length + threads - 1) / threads, start = Math.Min(array.Length, t * share);
                sum += TensorPrimitives.Sum(array.Span.Slice((int)start, (int)Math.Min(share, array.Length - start)));
            }

            lock (gate)
            {
                total += sum;
            }
        });
        Sink = total;
    }

    /// <summary>Keeps the plain read's result alive so the JIT cannot drop it.</summary>
    private static double Sink { get; set; }
}
