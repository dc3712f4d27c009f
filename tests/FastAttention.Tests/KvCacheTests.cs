using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Issue 18, item 3: the paged decoding cache, checked against a float64 reference over the values it stores.</summary>
public class KvCacheTests
{
    private static readonly KvElementType[] Types = [KvElementType.Float32, KvElementType.Float16, KvElementType.BFloat16, KvElementType.Q8];

    public static TheoryData<KvElementType, int, int, int> StorageGrid()
    {
        var data = new TheoryData<KvElementType, int, int, int>();
        foreach (KvElementType type in Types)
        {
            foreach (int pageSize in new[] { 16, 256 })
            {
                foreach (int d in new[] { 8, 59, 64, 128 })
                {
                    foreach (int block in new[] { 1, 7, 256 })
                    {
                        data.Add(type, pageSize, d, block);
                    }
                }
            }
        }

        return data;
    }

    public static TheoryData<KvElementType, int, int, int> AttentionGrid()
    {
        var data = new TheoryData<KvElementType, int, int, int>();
        foreach (KvElementType type in Types)
        {
            foreach (int pageSize in new[] { 16, 256 })
            {
                foreach (int d in new[] { 8, 59, 64, 128 })
                {
                    foreach (int block in new[] { 1, 7, 256 })
                    {
                        data.Add(type, pageSize, d, block);
                    }
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(StorageGrid))]
    public void Pages_hold_exactly_the_bits_a_tensor_encoding_holds(KvElementType type, int pageSize, int d, int block)
    {
        const int kvHeads = 2, n = 300;
        int dv = d + 3;
        using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = type, PageSize = pageSize });
        (float[] k, float[] v) = Fill(cache, kvHeads, n, d, dv, block, seed: d + block);
        Assert.Equal(n, cache.Count);
        Assert.Equal(KvTensor.Encode(k, d, type).ToFloat32(), cache.Widened(values: false, n));
        Assert.Equal(KvTensor.Encode(v, dv, type).ToFloat32(), cache.Widened(values: true, n));
    }

    [Theory]
    [InlineData(KvElementType.Float32)]
    [InlineData(KvElementType.Float16)]
    [InlineData(KvElementType.BFloat16)]
    [InlineData(KvElementType.Q8)]
    public void The_bound_kept_while_appending_is_the_bound_of_the_same_tensors(KvElementType type)
    {
        // Magnitudes from 1e-9 to 1e3 reach float16's subnormals and q8's small and large scales.
        const int kvHeads = 2, heads = 4, d = 59, dv = 40, n = 150, nq = 3;
        using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = type, PageSize = 16 });
        float[] k = Data.Normal((long)kvHeads * n * d, 61), v = Data.Normal((long)kvHeads * n * dv, 62);
        for (int x = 0; x < k.Length; x++)
        {
            k[x] *= MathF.Pow(10, (x % 13) - 9);
        }

        for (int x = 0; x < v.Length; x++)
        {
            v[x] *= MathF.Pow(10, (x % 7) - 4);
        }

        for (int first = 0; first < n; first += 11)
        {
            int t = Math.Min(11, n - first);
            cache.Append(Block(k, kvHeads, n, d, first, t), Block(v, kvHeads, n, dv, first, t));
        }

        float[] q = Data.Normal(heads * nq * d, 63);
        var shape = new AttentionShape(1, heads, nq, n, d, dv, kvHeads);
        KvErrorBound expected = AttentionCore.StorageBound(q, KvTensor.Encode(k, d, type), KvTensor.Encode(v, dv, type), shape, 1f / MathF.Sqrt(d));
        Assert.Equal(expected, cache.Bound(q, shape));
        Assert.Equal(type == KvElementType.Float32, expected.Absolute == 0);
    }

    [Theory]
    [MemberData(nameof(AttentionGrid))]
    public void Attend_matches_the_float64_reference_over_the_stored_values(KvElementType type, int pageSize, int d, int block)
    {
        const int kvHeads = 2, heads = 6, n = 263;
        int dv = d == 8 ? 8 : d - 2;
        foreach ((int window, int sinks) in new[] { (0, 0), (40, 0), (33, 4) })
        {
            using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = type, PageSize = pageSize, Window = window, Sinks = sinks });
            (float[] k, float[] v) = Fill(cache, kvHeads, n, d, dv, block, seed: d);
            float[] ks = cache.Widened(values: false, n), vs = cache.Widened(values: true, n);
            // 1 and 7 queries per head take the split-key (decoding) kernels, 33 the tiled ones (a third of the grid: its reference is the slow part).
            foreach (int nq in block == 7 ? new[] { 1, 7, 33 } : new[] { 1, 7 })
            {
                foreach (bool causal in new[] { true, false })
                {
                    float[] q = Data.Normal((long)heads * nq * d, nq + d);
                    var output = new float[heads * nq * dv];
                    AttentionRun run = cache.Attend(q, heads, output, causal);
                    string what = $"{KvElementTypes.Name(type)} page {pageSize} d {d} block {block} window {window} sinks {sinks} nq {nq} causal {causal} ({run.Kernel})";
                    Tolerance.AssertExact(output, Expected(q, ks, vs, heads, kvHeads, nq, n, d, dv, causal, window, sinks), what);
                    Assert.Equal(2.0 * heads * Mask(nq, n, causal, window, sinks).Count(x => x) * (d + dv), run.Flops);

                    // Against the values before rounding, the storage's own bound holds (plus the float32 kernel's rounding).
                    double[] original = Expected(q, k, v, heads, kvHeads, nq, n, d, dv, causal, window, sinks);
                    KvErrorBound bound = run.KvBound!;
                    Assert.Equal(type, bound.KeyType);
                    for (int x = 0; x < output.Length; x++)
                    {
                        Assert.True(Math.Abs(output[x] - original[x]) <= bound.Absolute + Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(original[x])),
                            $"{what}: element {x} is {output[x]}, unrounded reference {original[x]}, bound {bound.Absolute:E3}");
                    }
                }
            }
        }
    }

    [Theory]
    [InlineData(KvElementType.Float32)]
    [InlineData(KvElementType.Float16)]
    [InlineData(KvElementType.BFloat16)]
    [InlineData(KvElementType.Q8)]
    public void Every_kernel_of_the_storage_type_reads_the_pages(KvElementType type)
    {
        const int kvHeads = 2, heads = 4, d = 59, dv = 33, n = 150;
        string suffix = type == KvElementType.Float32 ? "" : "-" + KvElementTypes.Name(type);
        string[] kernels = [.. AttentionKernels.All
            .Where(k => k.IsSupported && KvElementTypes.Names.Skip(1).All(other => !k.Name.EndsWith("-" + other, StringComparison.Ordinal) || "-" + other == suffix)
                && (suffix.Length == 0 || k.Name.EndsWith(suffix, StringComparison.Ordinal)))
            .Select(k => k.Name)];
        Assert.NotEmpty(kernels);
        foreach (string kernel in kernels)
        {
            foreach ((int window, int sinks) in new[] { (0, 0), (20, 3) })
            {
                using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = type, PageSize = 16, Window = window, Sinks = sinks, Kernel = kernel });
                Fill(cache, kvHeads, n, d, dv, 13, seed: 71);
                float[] ks = cache.Widened(values: false, n), vs = cache.Widened(values: true, n);
                foreach (int nq in kernel.StartsWith("splitkey", StringComparison.Ordinal) ? new[] { 1, 16 } : new[] { 1, 17, 150 })
                {
                    float[] q = Data.Normal((long)heads * nq * d, nq);
                    var output = new float[heads * nq * dv];
                    AttentionRun run = cache.Attend(q, heads, output);
                    Assert.Equal(kernel, run.Kernel);
                    Tolerance.AssertExact(output, Expected(q, ks, vs, heads, kvHeads, nq, n, d, dv, causal: true, window, sinks), $"{kernel} window {window} nq {nq}");
                }
            }
        }
    }

    [Fact]
    public void Pages_stay_where_they_were_allocated_while_the_page_table_grows()
    {
        const int kvHeads = 3, d = 8;
        using var cache = new KvCache(kvHeads, d, d, new KvCacheOptions { ElementType = KvElementType.Q8, PageSize = 16 });
        Fill(cache, kvHeads, 20, d, d, 20, seed: 1);
        nint[] before = [.. Enumerable.Range(0, kvHeads).SelectMany(g => new[] { cache.PageAddress(g, 0), cache.PageAddress(g, 1) })];
        long reserved = cache.BytesReserved;
        Fill(cache, kvHeads, 1000, d, d, 1, seed: 2);
        nint[] after = [.. Enumerable.Range(0, kvHeads).SelectMany(g => new[] { cache.PageAddress(g, 0), cache.PageAddress(g, 1) })];
        Assert.Equal(before, after);
        Assert.All(after, address => Assert.Equal(0, address % 64));
        Assert.True(cache.BytesReserved > reserved);
    }

    [Fact]
    public void More_queries_than_tokens_see_nothing_before_the_first_and_an_empty_cache_outputs_zeros()
    {
        const int d = 16;
        using var cache = new KvCache(1, d, d, default);
        var output = new float[5 * d];
        output.AsSpan().Fill(7f);
        AttentionRun empty = cache.Attend(Data.Normal(5 * d, 1), 1, output);
        Assert.All(output, x => Assert.Equal(0f, x));
        Assert.Equal(0.0, empty.KvBound!.Absolute);

        (float[] k, float[] v) = Fill(cache, 1, 3, d, d, 1, seed: 2);
        float[] q = Data.Normal(5 * d, 3);
        cache.Attend(q, 1, output);
        Tolerance.AssertExact(output, Expected(q, k, v, 1, 1, 5, 3, d, d, causal: true, 0, 0), "nq 5 over 3 tokens");
        Assert.All(output.AsSpan(0, 2 * d).ToArray(), x => Assert.Equal(0f, x));
    }

    [Fact]
    public async Task Readers_during_appends_attend_over_the_prefix_they_saw()
    {
        // One writer appends blocks of 8 through several page-table growths (pages of 16) while two readers attend:
        // every output must be the reference over some prefix of whole blocks between the counts seen before and after.
        const int kvHeads = 2, heads = 4, d = 16, dv = 8, blocks = 300, blockSize = 8, n = blocks * blockSize;
        using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = KvElementType.BFloat16, PageSize = 16, MaxDegreeOfParallelism = 1 });
        float[] k = Data.Normal((long)kvHeads * n * d, 5), v = Data.Normal((long)kvHeads * n * dv, 6);
        float[] q = Data.Normal(heads * d, 7);
        float[] ks = KvTensor.Encode(k, d, KvElementType.BFloat16).ToFloat32(), vs = KvTensor.Encode(v, dv, KvElementType.BFloat16).ToFloat32();
        var seen = new System.Collections.Concurrent.ConcurrentBag<(int Before, int After, float[] Output)>();
        using var done = new ManualResetEventSlim();
        Task[] readers = [.. Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            do
            {
                int before = cache.Count;
                var output = new float[heads * dv];
                cache.Attend(q, heads, output);
                seen.Add((before, cache.Count, output));
            }
            while (!done.IsSet);
        }))];

        for (int b = 0; b < blocks; b++)
        {
            cache.Append(Block(k, kvHeads, n, d, b * blockSize, blockSize), Block(v, kvHeads, n, dv, b * blockSize, blockSize));
        }

        done.Set();
        await Task.WhenAll(readers);
        Assert.True(seen.Count > 0);
        var references = new Dictionary<int, double[]>();
        foreach ((int before, int after, float[] output) in seen)
        {
            bool matched = false;

            // Appends publish whole blocks, so every count a reader can see is a multiple of the block size.
            Assert.Equal(0, before % blockSize);
            for (int m = before; m <= after && !matched; m += blockSize)
            {
                if (!references.TryGetValue(m, out double[]? expected))
                {
                    expected = m == 0
                        ? new double[output.Length]
                        : Expected(q, Block(ks, kvHeads, n, d, 0, m), Block(vs, kvHeads, n, dv, 0, m), heads, kvHeads, 1, m, d, dv, causal: true, 0, 0);
                    references[m] = expected;
                }

                matched = output.Select((x, i) => Math.Abs(x - expected[i]) <= Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(expected[i]))).All(ok => ok);
            }

            Assert.True(matched, $"an output read between counts {before} and {after} matches no prefix");
        }
    }

    [Fact]
    public void Memory_counts_the_stored_bytes_and_whole_pages()
    {
        const int kvHeads = 3, d = 40, dv = 24, n = 1000;
        foreach (KvElementType type in Types)
        {
            using var cache = new KvCache(kvHeads, d, dv, new KvCacheOptions { ElementType = type, PageSize = 64 });
            Assert.Equal(0, cache.BytesUsed);
            Fill(cache, kvHeads, n, d, dv, 7, seed: 1);
            long row = KvElementTypes.RowBytes(type, d) + KvElementTypes.RowBytes(type, dv);
            Assert.Equal(n * kvHeads * row, cache.BytesUsed);

            // 16 pages per kv head (1000 / 64 rounded up), each at least 64 rows, and no more than 64 bytes of padding per array.
            long pages = kvHeads * 16L;
            Assert.InRange(cache.BytesReserved, pages * 64 * row, (pages * ((64 * row) + (4 * 64))) + (4L * 8 * kvHeads * 32));
        }
    }

    [Fact]
    public void Bad_input_is_a_clear_error_and_appends_nothing()
    {
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => new KvCache(1, 4, 4, new KvCacheOptions { PageSize = 24 })).ParamName);
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => new KvCache(1, 4, 4, new KvCacheOptions { PageSize = 8 })).ParamName);
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => new KvCache(1, 4, 4, new KvCacheOptions { Window = -1 })).ParamName);
        Assert.Equal("options", Assert.Throws<ArgumentException>(() => new KvCache(1, 4, 4, new KvCacheOptions { Scale = float.NaN })).ParamName);
        Assert.Equal("kvHeads", Assert.Throws<ArgumentException>(() => new KvCache(0, 4, 4, default)).ParamName);
        Assert.Equal("headDim", Assert.Throws<ArgumentException>(() => new KvCache(1, 0, 4, default)).ParamName);
        Assert.Equal("valueDim", Assert.Throws<ArgumentException>(() => new KvCache(1, 4, 0, default)).ParamName);

        var cache = new KvCache(2, 4, 3, new KvCacheOptions { ElementType = KvElementType.Float16 });
        Assert.Equal("keys", Assert.Throws<ArgumentException>(() => cache.Append(new float[7], new float[6])).ParamName);
        Assert.Equal("keys", Assert.Throws<ArgumentException>(() => cache.Append([], [])).ParamName);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => cache.Append(new float[8], new float[5])).ParamName);
        float[] keys = new float[16], values = new float[12];
        keys[5] = float.NaN;
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => cache.Append(keys, values)).Message);
        keys[5] = 0;
        values[11] = 70000f;
        ArgumentException range = Assert.Throws<ArgumentException>(() => cache.Append(keys, values));
        Assert.Equal("values", range.ParamName);
        Assert.Contains("kv head 1, token 1, column 2", range.Message);
        Assert.Equal(0, cache.Count);

        values[11] = 1f;
        cache.Append(keys, values);
        Assert.Equal(2, cache.Count);
        Assert.Equal("heads", Assert.Throws<ArgumentException>(() => cache.Attend(new float[12], 3, new float[9])).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentException>(() => cache.Attend(new float[4], 0, new float[3])).ParamName);
        Assert.Equal("query", Assert.Throws<ArgumentException>(() => cache.Attend(new float[10], 2, new float[6])).ParamName);
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => cache.Attend(new float[8], 2, new float[5])).ParamName);
        float[] shared = new float[16];
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => cache.Attend(shared.AsSpan(0, 8), 2, shared.AsSpan(4, 6))).ParamName);

        cache.Dispose();
        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cache.Append(keys, values));
        Assert.Throws<ObjectDisposedException>(() => cache.Attend(new float[8], 2, new float[6]));
    }

    [Theory]
    [InlineData(KvElementType.Float32)]
    [InlineData(KvElementType.Float16)]
    [InlineData(KvElementType.BFloat16)]
    [InlineData(KvElementType.Q8)]
    public void LevKvCache_in_a_storage_type_attends_over_the_stored_selection(KvElementType type)
    {
        const int d = 8, dv = 5, n = 1500;
        float[] k = Data.Normal(n * d, 41), v = Data.Normal(n * dv, 42), q = Data.Normal(d, 43);
        for (int j = 0; j < n; j += 89)
        {
            k[(j * d) + 2] *= 8;
        }

        using var cache = new LevKvCache(d, dv, new LevAttentionOptions { Eps = 0.02, KeepFirst = 3, KeepLast = 6 }, type);
        for (int j = 0; j < n; j++)
        {
            cache.Append(k.AsSpan(j * d, d), v.AsSpan(j * dv, dv));
        }

        long[] selected = cache.Selected;
        Assert.Contains(0L, selected);
        Assert.Contains(n - 1L, selected);
        var output = new float[dv];
        cache.Attend(q, output);
        int[] kept = [.. selected.Select(x => (int)x)];
        float[] ks = KvTensor.Encode(LevAttention.Gather(k, kept, d), d, type).ToFloat32(), vs = KvTensor.Encode(LevAttention.Gather(v, kept, dv), dv, type).ToFloat32();
        Tolerance.AssertExact(output, Expected(q, ks, vs, 1, 1, 1, kept.Length, d, dv, causal: false, 0, 0), KvElementTypes.Name(type));

        // Attending reorders slots, not the selection: a second call gives the same bits.
        var again = new float[dv];
        cache.Attend(q, again);
        Assert.Equal(output, again);
        Assert.Equal(selected, cache.Selected);
    }

    [Fact]
    public void LevKvCache_reuses_the_slots_of_evicted_tokens()
    {
        const int d = 4, n = 5000, top = 8;
        float[] k = Data.Normal(n * d, 51), v = Data.Normal(n, 52);
        using var cache = new LevKvCache(d, 1, new LevAttentionOptions { Top = top, KeepFirst = 2, KeepLast = 5 }, KvElementType.Q8);
        long most = 0;
        for (int j = 0; j < n; j++)
        {
            cache.Append(k.AsSpan(j * d, d), v.AsSpan(j, 1));
            Assert.InRange(cache.HeldCount, 1, (4 * top) + 2 + 5);
            most = Math.Max(most, cache.BytesReserved);
        }

        // At most 39 tokens are ever held: one page of slots serves the whole stream.
        Assert.Equal(cache.HeldCount * (KvElementTypes.RowBytes(KvElementType.Q8, d) + KvElementTypes.RowBytes(KvElementType.Q8, 1)), cache.BytesUsed);
        Assert.Equal(most, cache.BytesReserved);
        Assert.True(cache.BytesReserved < 16384, $"{cache.BytesReserved} bytes reserved");
        Assert.Equal(4 * top, cache.CandidateCount);
        Assert.Contains(n - 1L, cache.Selected);

        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cache.Append(k.AsSpan(0, d), v.AsSpan(0, 1)));
        Assert.Throws<ObjectDisposedException>(() => cache.Attend(k.AsSpan(0, d), new float[1]));
        Assert.Throws<ObjectDisposedException>(() => cache.Selected);
    }

    /// <summary>Appends n tokens in blocks of <paramref name="block"/>; returns the keys and values as <c>[kvHeads, n, d]</c> and <c>[kvHeads, n, dv]</c>.</summary>
    private static (float[] Keys, float[] Values) Fill(KvCache cache, int kvHeads, int n, int d, int dv, int block, int seed)
    {
        float[] k = Data.Normal((long)kvHeads * n * d, seed), v = Data.Normal((long)kvHeads * n * dv, seed + 1);
        for (int first = 0; first < n; first += block)
        {
            int t = Math.Min(block, n - first);
            cache.Append(Block(k, kvHeads, n, d, first, t), Block(v, kvHeads, n, dv, first, t));
        }

        return (k, v);
    }

    /// <summary>Tokens first .. first + t of every kv head of <c>[kvHeads, n, width]</c>, as <c>[kvHeads, t, width]</c>.</summary>
    private static float[] Block(float[] all, int kvHeads, int n, int width, int first, int t)
    {
        var block = new float[kvHeads * t * width];
        for (int g = 0; g < kvHeads; g++)
        {
            all.AsSpan(((g * n) + first) * width, t * width).CopyTo(block.AsSpan(g * t * width));
        }

        return block;
    }

    /// <summary>The float64 reference with causal limit, window and sinks as an explicit mask (AttentionArgs' rule).</summary>
    private static double[] Expected(float[] q, float[] k, float[] v, int heads, int kvHeads, int nq, int n, int d, int dv, bool causal, int window, int sinks) =>
        Reference.Attention(q, k, v, new AttentionShape(1, heads, nq, n, d, dv, kvHeads), new Reference.Options(Mask: Mask(nq, n, causal, window, sinks)));

    /// <summary>Which keys each query sees, <c>[nq, n]</c>: the rule of AttentionArgs.Window, written out.</summary>
    private static bool[] Mask(int nq, int n, bool causal, int window, int sinks)
    {
        var mask = new bool[nq * n];
        for (int i = 0; i < nq; i++)
        {
            int p = i + n - nq;
            for (int j = 0; j < n; j++)
            {
                mask[(i * n) + j] = (!causal || j <= p) && (window == 0 || j > p - window || j < sinks);
            }
        }

        return mask;
    }
}
