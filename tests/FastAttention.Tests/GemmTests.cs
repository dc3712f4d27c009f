using System.Runtime.Intrinsics;
using FastAttention.Kernels;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

public unsafe class GemmTests
{
    private delegate void Multiply(int m, int n, int k, float* a, bool ta, float* b, bool tb, float* c, float beta, int threads);

    private static Multiply Width(string width) => width switch
    {
        "v512" => Gemm.Typed<Simd512, Vector512<float>>.Multiply,
        "v256" => Gemm.Typed<Simd256, Vector256<float>>.Multiply,
        _ => Gemm.Typed<SimdScalar, float>.Multiply,
    };

    public static TheoryData<string, int, int, int, bool, bool> Cases()
    {
        var data = new TheoryData<string, int, int, int, bool, bool>();
        var widths = new List<string> { "scalar" };
        if (Simd512.IsSupported)
        {
            widths.Add("v512");
        }

        if (Simd256.IsSupported)
        {
            widths.Add("v256");
        }

        (int M, int N, int K)[] sizes = [(1, 1, 1), (3, 5, 7), (4, 64, 256), (5, 65, 257), (17, 300, 33), (64, 257, 600), (130, 70, 513)];
        foreach (string w in widths)
        {
            foreach ((int m, int n, int k) in sizes)
            {
                foreach (bool ta in new[] { false, true })
                {
                    foreach (bool tb in new[] { false, true })
                    {
                        data.Add(w, m, n, k, ta, tb);
                    }
                }
            }
        }

        return data;
    }

    private static double[] ReferenceProduct(float[] a, bool ta, float[] b, bool tb, int m, int n, int k)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int t = 0; t < k; t++)
                {
                    sum += (double)a[ta ? (t * m) + i : (i * k) + t] * b[tb ? (j * k) + t : (t * n) + j];
                }

                c[(i * n) + j] = sum;
            }
        }

        return c;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_float64_reference(string width, int m, int n, int k, bool transposeA, bool transposeB)
    {
        float[] a = Data.Normal((long)m * k, m + k), b = Data.Normal((long)k * n, n + 7);
        float[] c = Data.Normal((long)m * n, 3);
        float[] before = (float[])c.Clone();
        double[] product = ReferenceProduct(a, transposeA, b, transposeB, m, n, k);
        fixed (float* pa = a, pb = b, pc = c)
        {
            Width(width)(m, n, k, pa, transposeA, pb, transposeB, pc, 0.5f, 2);
        }

        for (int i = 0; i < c.Length; i++)
        {
            double expected = product[i] + (0.5 * before[i]);
            double limit = 1e-5 * Math.Sqrt(k) * (1 + Math.Abs(expected));
            Assert.True(Math.Abs(c[i] - expected) <= limit, $"{width} m={m} n={n} k={k} ta={transposeA} tb={transposeB}: C[{i}] = {c[i]}, expected {expected}");
        }
    }

    [Theory]
    [InlineData(0, 5, 3)]
    [InlineData(5, 0, 3)]
    [InlineData(4, 3, 0)]
    public void Empty_dimensions_are_handled(int m, int n, int k)
    {
        float[] a = new float[m * k], b = new float[k * n], c = Enumerable.Repeat(7f, m * n).ToArray();
        Gemm.Multiply(m, n, k, a, false, b, false, c, 0.5f, 2);
        Assert.All(c, x => Assert.Equal(k == 0 ? 3.5f : 7f, x));
    }

    [Fact]
    public void Crosses_every_block_boundary()
    {
        // More rows than one row block, more columns than one B block, more depth than one depth block.
        int m = Gemm.BlockRows + 5, n = Gemm.BlockColumns + 3, k = Gemm.BlockDepth + 1;
        float[] a = Data.Normal((long)m * k, 1), b = Data.Normal((long)k * n, 2);
        var c = new float[m * n];
        Gemm.Multiply(m, n, k, a, false, b, true, c, 0f, 2);
        var random = new Random(3);
        for (int probe = 0; probe < 2000; probe++)
        {
            int i = random.Next(m), j = probe < 8 ? n - 1 - probe : random.Next(n);
            double expected = 0;
            for (int t = 0; t < k; t++)
            {
                expected += (double)a[(i * k) + t] * b[((long)j * k) + t];
            }

            Assert.True(Math.Abs(c[(i * n) + j] - expected) <= 1e-5 * Math.Sqrt(k) * (1 + Math.Abs(expected)), $"C[{i},{j}] = {c[(i * n) + j]}, expected {expected}");
        }
    }

    [Fact]
    public void Beta_zero_ignores_nan_garbage_in_c_and_bits_do_not_depend_on_threads()
    {
        const int M = 77, N = 300, K = 700;
        float[] a = Data.Normal(M * K, 1), b = Data.Normal(K * N, 2);
        float[] one = Enumerable.Repeat(float.NaN, M * N).ToArray(), two = new float[M * N];
        fixed (float* pa = a, pb = b, p1 = one, p2 = two)
        {
            Gemm.Multiply(M, N, K, pa, false, pb, false, p1, 0f, 1);
            Gemm.Multiply(M, N, K, pa, false, pb, false, p2, 0f, 2);
        }

        Assert.DoesNotContain(one, float.IsNaN);
        Assert.Equal(one, two);
    }
}
