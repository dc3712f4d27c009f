namespace FastAttention.Tests.Support;

/// <summary>Gradient checks shared by the backward tests: central finite differences in double, error measures, the naive float32 yardstick.</summary>
internal static class Gradients
{
    /// <summary>
    /// Central finite differences of <paramref name="loss"/> at <paramref name="point"/>: (f(x + h e_i) - f(x - h e_i)) / 2h per coordinate.
    /// The loss is evaluated in double, so with h = 1e-5 the error is ~h^2 (truncation) + 1e-16 / h (rounding), about 1e-10 relative.
    /// </summary>
    public static double[] FiniteDifferences(double[] point, Func<double[], double> loss, double h = 1e-5)
    {
        double[] gradient = new double[point.Length];
        double[] x = (double[])point.Clone();
        for (int i = 0; i < x.Length; i++)
        {
            double saved = x[i];
            x[i] = saved + h;
            double up = loss(x);
            x[i] = saved - h;
            double down = loss(x);
            x[i] = saved;
            gradient[i] = (up - down) / (2 * h);
        }

        return gradient;
    }

    /// <summary>Asserts |actual - expected| &lt;= atol + rtol |expected| elementwise, naming the element.</summary>
    public static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, double atol, double rtol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < actual.Length; i++)
        {
            double limit = atol + (rtol * Math.Abs(expected[i]));
            if (!(Math.Abs(actual[i] - expected[i]) <= limit))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]:G9}, expected {expected[i]:G9}, |diff| {Math.Abs(actual[i] - expected[i]):E3} > {limit:E3}");
            }
        }
    }

    public static double MaxAbs(ReadOnlySpan<double> values)
    {
        double max = 0;
        foreach (double x in values)
        {
            max = Math.Max(max, Math.Abs(x));
        }

        return max;
    }

    /// <summary>
    /// The exact-fp32 rule for a gradient: within atol + rtol |ref| (atol relative to the gradient's largest entry, at least 1: the inputs are
    /// unit normals, so the gradients are O(1), and a gradient that is 0 in exact arithmetic, as with one key, may carry rounding) and no
    /// worse than twice a naive float32 backward's max error (plus a floor for sizes where the naive one is exact to the last bit).
    /// An ill-conditioned gradient (<paramref name="wellConditioned"/> false: power attention with p &lt; 1 divides by the score, so the
    /// float32 rounding of one near-zero score decides the max error, ours or the naive one's by the luck of the summation order) is held
    /// to a root-mean-square error of 1e-4 of its scale instead.
    /// </summary>
    public static void AssertFloat32(ReadOnlySpan<float> fast, ReadOnlySpan<float> naive, ReadOnlySpan<double> reference, string what, bool wellConditioned = true)
    {
        double scale = Math.Max(MaxAbs(reference), 1.0);
        if (!wellConditioned)
        {
            double rms = RootMeanSquareError(fast, reference);
            Assert.True(rms <= 1e-4 * scale, $"{what}: root-mean-square error {rms:E3} > 1e-4 x scale {scale:E3}");
            return;
        }

        double fastError = Tolerance.MaxAbsError(fast, reference), naiveError = Tolerance.MaxAbsError(naive, reference);
        for (int i = 0; i < fast.Length; i++)
        {
            double limit = (Tolerance.ExactAtol * scale) + (Tolerance.ExactRtol * Math.Abs(reference[i]));
            if (!(Math.Abs(fast[i] - reference[i]) <= limit))
            {
                Assert.Fail($"{what}: element {i} is {fast[i]:G9}, reference {reference[i]:G9}, |diff| {Math.Abs(fast[i] - reference[i]):E3} > {limit:E3}");
            }
        }

        Assert.True(fastError <= (Tolerance.NaiveFactor * naiveError) + (Tolerance.NaiveFloor * scale),
            $"{what}: max error {fastError:E3} is more than {Tolerance.NaiveFactor} x the naive float32 backward's {naiveError:E3} (scale {scale:E3})");
    }

    public static double RootMeanSquareError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        double sum = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            sum += (actual[i] - expected[i]) * (actual[i] - expected[i]);
        }

        return Math.Sqrt(sum / Math.Max(1, actual.Length));
    }

    public static double[] ToDouble(ReadOnlySpan<float> values)
    {
        double[] result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }
}
