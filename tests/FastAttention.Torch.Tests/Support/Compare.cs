using FastAttention.Tests.Support;

namespace FastAttention.Torch.Tests.Support;

/// <summary>Our float32 results against libtorch's float64 ones, with the exact kernels' tolerance.</summary>
internal static class Compare
{
    /// <summary>
    /// Units of float32 rounding (2^-24) of the summed terms' magnitude (<see cref="TorchForward.Gradients"/>) allowed
    /// on top of the exact tolerance for a gradient: where the terms cancel, the result's own size says nothing about
    /// float32's error.
    /// </summary>
    public const double RoundingUnits = 8;

    /// <summary>dQ, dK and dV of our step against libtorch's autograd gradients.</summary>
    public static void Gradients(Step ours, TorchGradients torch, string what, TorchCase c)
    {
        Close(ours.QueryGradient, torch.Query, "dQ" + what, c, torch.QueryMagnitude);
        Close(ours.KeyGradient, torch.Key, "dK" + what, c, torch.KeyMagnitude);
        Close(ours.ValueGradient, torch.Value, "dV" + what, c, torch.ValueMagnitude);
    }

    /// <summary>
    /// |ours - torch| &lt;= atol + rtol |torch| (+ <see cref="RoundingUnits"/> 2^-24 magnitude when given) elementwise;
    /// equal infinities (the log-sum-exp of a row that sees no key) match.
    /// </summary>
    public static void Close(ReadOnlySpan<float> ours, double[] torch, string what, TorchCase c, double[]? magnitude = null)
    {
        Assert.Equal(torch.Length, ours.Length);
        for (int i = 0; i < ours.Length; i++)
        {
            if (double.IsInfinity(torch[i]) && ours[i] == torch[i])
            {
                continue;
            }

            double limit = Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(torch[i])) + (magnitude is null ? 0 : RoundingUnits * Math.ScaleB(magnitude[i], -24));
            if (!(Math.Abs(ours[i] - torch[i]) <= limit))
            {
                Assert.Fail($"{what} ({c}): element {i} is {ours[i]}, libtorch {torch[i]}, |diff| {Math.Abs(ours[i] - torch[i]):E3} > {limit:E3}");
            }
        }
    }
}
