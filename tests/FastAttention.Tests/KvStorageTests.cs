using System.Runtime.Intrinsics;
using FastAttention.IO;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// Low-precision key/value storage: encoding rounds to nearest within the stated per-element error, decoding is exact, bad
/// values are refused by name, and the stated output bound (<see cref="KvErrorBound"/>) holds in float64 between attention on
/// the original values and on the stored ones, on the awkward grid and on the real OCR tensors.
/// </summary>
public class KvStorageTests
{
    public static TheoryData<KvElementType> LowPrecision => [KvElementType.Float16, KvElementType.BFloat16, KvElementType.Q8];

    [Theory]
    [MemberData(nameof(LowPrecision))]
    public void Encoding_rounds_within_the_stated_element_error(KvElementType type)
    {
        var random = new Random(5);
        int rowLength = 59; // two q8 blocks, the second partial
        float[] values = new float[rowLength * 40];
        for (int x = 0; x < values.Length; x++)
        {
            // Magnitudes from 1e-6 to 1e3, so subnormal halves and q8 blocks of mixed sizes both occur.
            values[x] = (float)((random.NextDouble() - 0.5) * Math.Pow(10, (random.NextDouble() * 9) - 6));
        }

        values[3] = 0f;
        KvTensor stored = KvTensor.Encode(values, rowLength, type);
        float[] decoded = stored.ToFloat32();
        double[] scales = type == KvElementType.Q8 ? [.. stored.Q8Scales.ToArray().Select(s => (double)s)] : [];
        for (int x = 0; x < values.Length; x++)
        {
            double allowed = type == KvElementType.Q8
                ? 0.5 * scales[(x / rowLength * 2) + (x % rowLength / 32)]
                : KvElementTypes.ElementError(type, decoded[x]);
            Assert.True(Math.Abs(decoded[x] - (double)values[x]) <= allowed * (1 + 1e-12), $"{type} element {x}: {values[x]} stored as {decoded[x]}, allowed {allowed}");
        }

        Assert.Equal(0f, decoded[3]);
    }

    [Fact]
    public void Float16_and_bfloat16_round_to_nearest_even_like_the_definitions()
    {
        var random = new Random(9);
        for (int x = 0; x < 20000; x++)
        {
            float v = BitConverter.Int32BitsToSingle(random.Next() ^ (random.Next(2) << 31));
            if (!float.IsFinite(v) || Math.Abs(v) > 60000f)
            {
                continue;
            }

            Assert.Equal((float)(Half)v, KvTensor.Encode([v], 1, KvElementType.Float16).ToFloat32()[0]);
            Assert.Equal(ReferenceBFloat16(v), KvTensor.Encode([v], 1, KvElementType.BFloat16).ToFloat32()[0]);
        }
    }

    [Fact]
    public void Q8_scales_never_clip_and_rows_of_whole_blocks_take_8_5_bits()
    {
        float[] values = [.. Enumerable.Range(0, 128).Select(t => (t - 60) * 0.37f)];
        KvTensor stored = KvTensor.Encode(values, 64, KvElementType.Q8);
        Assert.Equal(8.5, stored.BitsPerValue, 12);
        Assert.Equal(128 + (2 * 4), stored.ByteCount);
        sbyte[] q = stored.Q8Values.ToArray();
        Half[] scales = stored.Q8Scales.ToArray();
        for (int b = 0; b < 4; b++)
        {
            float max = values.Skip(b * 32).Take(32).Max(Math.Abs);
            Assert.True((float)scales[b] * 127f >= max);
            Assert.Contains(q.Skip(b * 32).Take(32), x => Math.Abs((int)x) >= 126);
        }
    }

    [Fact]
    public void Values_a_type_cannot_hold_are_refused_by_index()
    {
        var half = Assert.Throws<ArgumentException>(() => KvTensor.Encode([1f, 2f, 70000f, 3f], 2, KvElementType.Float16));
        Assert.Contains("[1, 0] (flat index 2)", half.Message);
        Assert.Contains("65504", half.Message);
        var nan = Assert.Throws<ArgumentException>(() => KvTensor.Encode([1f, float.NaN], 2, KvElementType.Q8));
        Assert.Contains("flat index 1", nan.Message);
        Assert.Throws<ArgumentException>(() => KvTensor.Encode([1f, 2f, 3f], 2, KvElementType.BFloat16));
        Assert.Throws<ArgumentException>(() => KvTensor.FromQ8(new sbyte[64], new Half[1], 64));

        // bf16 keeps float32's range: infinity and NaN stay what they are (the attention call then rejects them by name).
        float[] special = KvTensor.Encode([float.PositiveInfinity, float.NaN, 3e38f], 3, KvElementType.BFloat16).ToFloat32();
        Assert.True(float.IsPositiveInfinity(special[0]));
        Assert.True(float.IsNaN(special[1]));
        Assert.True(float.IsFinite(special[2]) || float.IsPositiveInfinity(special[2]));
    }

    [Fact]
    public void Edge_cases_a_review_found_are_refused_or_bounded()
    {
        // A finite value within half a bfloat16 step of float's largest would round to infinity: refused by index, in a tensor and in a cache.
        var bf16 = Assert.Throws<ArgumentException>(() => KvTensor.Encode([1f, float.MaxValue], 2, KvElementType.BFloat16));
        Assert.Contains("flat index 1", bf16.Message, StringComparison.Ordinal);
        using (var cache = new KvCache(1, 2, 2, new KvCacheOptions { ElementType = KvElementType.BFloat16 }))
        {
            Assert.Throws<ArgumentException>(() => cache.Append([1f, float.MaxValue], [1f, 2f]));
        }

        Assert.Throws<ArgumentException>(() => new KvCache(1, 2, 2, new KvCacheOptions { Sinks = 4 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => KvElementTypes.Name((KvElementType)9));

        // All-zero values: the bound stays a finite number (float16 still rounds the keys).
        var shape = new AttentionShape(1, 1, 2, 8, 4, 4);
        float[] q = [.. Enumerable.Range(0, 8).Select(x => x * 0.3f)], k = [.. Enumerable.Range(0, 32).Select(x => (x % 7) * 0.1f)];
        var output = new float[shape.OutputLength];
        AttentionRun run = ExactAttention.Compute(q, KvTensor.Encode(k, 4, KvElementType.Float16), KvTensor.Encode(new float[32], 4, KvElementType.Float16), shape, output);
        Assert.True(double.IsFinite(run.KvBound!.Absolute) && run.KvBound.Absolute > 0, $"absolute bound {run.KvBound.Absolute}");
        Assert.All(output, x => Assert.Equal(0f, x));

        // A destination sharing memory with wrapped float32 keys or values is refused, not computed wrong.
        float[] buffer = new float[64];
        KvTensor keys = KvTensor.FromFloat32(buffer.AsMemory(0, 32), 4), values = KvTensor.FromFloat32(buffer.AsMemory(32, 32), 4);
        var overlap = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, keys, values, shape, buffer.AsSpan(32, 8)));
        Assert.Equal("destination", overlap.ParamName);
    }

    [Fact]
    public unsafe void Widening_loads_are_exact_for_every_float16_and_bfloat16_pattern()
    {
        var bits = new ushort[65536];
        for (int x = 0; x < bits.Length; x++)
        {
            bits[x] = (ushort)x;
        }

        var wide = new float[bits.Length];
        fixed (ushort* b = bits)
        fixed (float* w = wide)
        {
            foreach (KvElementType type in new[] { KvElementType.Float16, KvElementType.BFloat16 })
            {
                KvWiden.Row(type, (byte*)b, null, bits.Length, w);
                for (int x = 0; x < bits.Length; x++)
                {
                    float expected = type == KvElementType.Float16 ? (float)BitConverter.UInt16BitsToHalf((ushort)x) : BitConverter.Int32BitsToSingle(x << 16);
                    float scalar = KvWiden.Scalar(type, (byte*)b, null, x);
                    float v256 = KvWiden.Load256(type, (byte*)b, null, x / 8 * 8).GetElement(x % 8);
                    float v512 = Vector512.IsHardwareAccelerated ? KvWiden.Load512(type, (byte*)b, null, x / 16 * 16).GetElement(x % 16) : expected;
                    foreach (float got in new[] { wide[x], scalar, v256, v512 })
                    {
                        Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(expected) || (float.IsNaN(got) && float.IsNaN(expected)),
                            $"{type} bits 0x{x:x4}: got {got}, expected {expected}");
                    }
                }
            }
        }
    }

    public static TheoryData<KvElementType, int, int, int, int, bool> BoundGrid()
    {
        var data = new TheoryData<KvElementType, int, int, int, int, bool>();
        foreach (KvElementType type in new[] { KvElementType.Float16, KvElementType.BFloat16, KvElementType.Q8 })
        {
            foreach ((int nq, int nk, int d, bool causal) in new[] { (1, 1, 1, false), (7, 33, 15, true), (2, 257, 64, false), (16, 113, 59, true), (1, 1023, 128, false) })
            {
                data.Add(type, nq, nk, d, d == 59 ? 100 : d, causal);
            }
        }

        return data;
    }

    /// <summary>The bound is about storage, not kernels: float64 attention on the stored values stays within it of float64 attention on the originals.</summary>
    [Theory]
    [MemberData(nameof(BoundGrid))]
    public void The_stated_bound_holds_in_float64_on_the_awkward_grid(KvElementType type, int nq, int nk, int d, int dv, bool causal)
    {
        var shape = new AttentionShape(1, 2, nq, nk, d, dv, 1);
        var random = new Random((nq * 31) + nk + d);
        float[] q = Gaussian(random, shape.QueryLength, 1.5), k = Gaussian(random, shape.KeyLength, 1.5), v = Gaussian(random, shape.ValueLength, 1.0);
        AssertBoundHolds(type, q, k, v, shape, 1f / MathF.Sqrt(d), causal);
    }

    [Theory]
    [InlineData("line260", "block1")]
    [InlineData("line260", "block2")]
    [InlineData("line1000", "block2")]
    public void The_stated_bound_holds_on_the_real_OCR_tensors(string line, string block)
    {
        TensorData<float> q = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "q.npy"));
        TensorData<float> k = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "k.npy"));
        TensorData<float> v = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "v.npy"));
        var shape = new AttentionShape(1, q.Shape[0], q.Shape[1], k.Shape[1], q.Shape[2], v.Shape[2]);
        foreach (KvElementType type in new[] { KvElementType.Float16, KvElementType.BFloat16, KvElementType.Q8 })
        {
            AssertBoundHolds(type, q.Data, k.Data, v.Data, shape, 1f / MathF.Sqrt(15f), false);
        }
    }

    /// <summary>The kernels themselves (decoding and tiled, every type) on the real tensors: within the stated bound of float64 attention on the
    /// float32 originals, plus the float32 tolerance the OCR data carries (about 1e-5 of the largest output, data/ocr/README.md).</summary>
    [Theory]
    [InlineData("line260", "block2", 260)]
    [InlineData("line260", "block2", 1)]
    [InlineData("line1000", "block2", 1000)]
    [InlineData("line1000", "block2", 16)]
    public void Typed_kernels_stay_within_the_stated_bound_on_the_real_OCR_tensors(string line, string block, int queries)
    {
        TensorData<float> q = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "q.npy"));
        TensorData<float> k = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "k.npy"));
        TensorData<float> v = NumpyFile.ReadFloat32(Data.Fixture("ocr", line, block, "v.npy"));
        int heads = q.Shape[0], n = q.Shape[1], d = q.Shape[2];

        // The last `queries` queries of each head (a decoding step when few), causal as a decoder would see them.
        float[] query = [.. Enumerable.Range(0, heads).SelectMany(h => q.Data.Skip(((h * n) + n - queries) * d).Take(queries * d))];
        var shape = new AttentionShape(1, heads, queries, n, d, v.Shape[2]);
        var expected = new double[shape.OutputLength];
        ReferenceAttention.Compute(query, k.Data, v.Data, shape, expected, causal: true);
        double tolerance = 1e-5 * expected.Max(Math.Abs);
        foreach (KvElementType type in Enum.GetValues<KvElementType>())
        {
            var output = new float[shape.OutputLength];
            AttentionRun run = ExactAttention.Compute(query, KvTensor.Encode(k.Data, d, type), KvTensor.Encode(v.Data, v.Shape[2], type), shape, output, new ExactAttentionOptions { Causal = true });
            Assert.StartsWith(queries <= 16 ? "splitkey-" : "tiled-", run.Kernel, StringComparison.Ordinal);
            Assert.Equal(type != KvElementType.Float32, run.Kernel.EndsWith("-" + KvElementTypes.Name(type), StringComparison.Ordinal));
            double worst = expected.Select((e, x) => Math.Abs(e - output[x])).Max();
            Assert.True(worst <= run.KvBound!.Absolute + tolerance, $"{type} on {run.Kernel}: error {worst:G4} exceeds the bound {run.KvBound.Absolute:G4} + {tolerance:G3}");
        }
    }

    [Fact]
    public void Float32_storage_states_a_zero_bound_and_the_bound_grows_with_coarser_types()
    {
        var shape = new AttentionShape(1, 1, 4, 64, 32, 32);
        var random = new Random(3);
        float[] q = Gaussian(random, shape.QueryLength, 1), k = Gaussian(random, shape.KeyLength, 1), v = Gaussian(random, shape.ValueLength, 1);
        double[] bounds = [.. Enumerable.Range(0, 4).Select(t => Bound((KvElementType)t, q, k, v, shape, 0.2f).RelativeToMaxValue)];
        Assert.Equal(0, bounds[0]);
        Assert.True(bounds[1] < bounds[2], $"f16 {bounds[1]} < bf16 {bounds[2]}");
        Assert.True(bounds[1] > 0 && bounds[3] > 0);
    }

    private static KvErrorBound Bound(KvElementType type, float[] q, float[] k, float[] v, AttentionShape shape, float scale) =>
        AttentionCore.StorageBound(q, KvTensor.Encode(k, shape.HeadDim, type), KvTensor.Encode(v, shape.ValueDim, type), shape, scale);

    private static void AssertBoundHolds(KvElementType type, float[] q, float[] k, float[] v, AttentionShape shape, float scale, bool causal)
    {
        KvTensor keys = KvTensor.Encode(k, shape.HeadDim, type), values = KvTensor.Encode(v, shape.ValueDim, type);
        KvErrorBound bound = AttentionCore.StorageBound(q, keys, values, shape, scale);
        var exact = new double[shape.OutputLength];
        var stored = new double[shape.OutputLength];
        ReferenceAttention.Compute(q, k, v, shape, exact, scale, causal);
        ReferenceAttention.Compute(q, keys.ToFloat32(), values.ToFloat32(), shape, stored, scale, causal);
        double worst = 0;
        for (int x = 0; x < exact.Length; x++)
        {
            worst = Math.Max(worst, Math.Abs(stored[x] - exact[x]));
        }

        Assert.True(bound.RelativeToMaxValue > 0, $"{type}: a positive bound");
        Assert.True(worst <= bound.Absolute, $"{type} {shape}: error {worst:G4} exceeds the stated bound {bound.Absolute:G4} (score error {bound.ScoreError:G4}, value error {bound.ValueError:G4})");
    }

    private static float[] Gaussian(Random random, long length, double sigma)
    {
        var x = new float[length];
        for (long i = 0; i < length; i++)
        {
            x[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        }

        return x;
    }

    /// <summary>bfloat16 by its definition: the float32 rounded to 8 significant bits, to nearest, ties to even (via double arithmetic).</summary>
    private static float ReferenceBFloat16(float v)
    {
        if (v == 0f)
        {
            return v;
        }

        int exponent = Math.ILogB(v);
        double ulp = Math.ScaleB(1.0, Math.Max(exponent, -126) - 7);
        return (float)(Math.Round(v / ulp, MidpointRounding.ToEven) * ulp);
    }
}
