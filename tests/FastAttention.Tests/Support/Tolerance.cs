namespace FastAttention.Tests.Support;

/// <summary>Every tolerance the tests use, declared per kernel family in one place.</summary>
internal static class Tolerance
{
    /// <summary>Exact fp32 kernels: |x - ref| &lt;= Atol + Rtol |ref|.</summary>
    public const double ExactAtol = 2e-5;

    /// <summary>Exact fp32 kernels, relative part.</summary>
    public const double ExactRtol = 1e-4;

    /// <summary>Exact fp32 kernels must also be no worse than this multiple of a naive fp32 kernel's max error (plus <see cref="NaiveFloor"/>).</summary>
    public const double NaiveFactor = 2.0;

    /// <summary>Floor under the naive comparison, for sizes where the naive kernel is exact to the last bit.</summary>
    public const double NaiveFloor = 2e-6;

    /// <summary>The exact tensor attention backward against its float64 reference: max |error| over max(1, max |reference|) per gradient.</summary>
    public const double TensorBackwardRelative = 5e-5;

    /// <summary>Our exact attention against ONNX Runtime's out.npy on the OCR model (relative to max |out|).</summary>
    public const double OnnxRuntimeRelative = 1e-5;

    /// <summary>The softmax exp (base 2) wherever its result is a normal float: the exact-speed issue's bound.</summary>
    public const double SoftmaxExpRelative = 2e-7;

    public static double MaxAbsError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        double max = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            max = Math.Max(max, Math.Abs(actual[i] - expected[i]));
        }

        return max;
    }

    public static void AssertExact(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < actual.Length; i++)
        {
            double limit = ExactAtol + (ExactRtol * Math.Abs(expected[i]));
            if (!(Math.Abs(actual[i] - expected[i]) <= limit))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]}, reference {expected[i]}, |diff| {Math.Abs(actual[i] - expected[i]):E3} > {limit:E3}");
            }
        }
    }
}
