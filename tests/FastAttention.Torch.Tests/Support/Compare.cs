using FastAttention.Tests.Support;

namespace FastAttention.Torch.Tests.Support;

/// <summary>Our float32 results against libtorch's float64 ones, with the exact kernels' tolerance.</summary>
internal static class Compare
{
    /// <summary>|ours - torch| &lt;= atol + rtol |torch| elementwise; equal infinities (the log-sum-exp of a row that sees no key) match.</summary>
    public static void Close(ReadOnlySpan<float> ours, double[] torch, string what, TorchCase c)
    {
        Assert.Equal(torch.Length, ours.Length);
        for (int i = 0; i < ours.Length; i++)
        {
            if (double.IsInfinity(torch[i]) && ours[i] == torch[i])
            {
                continue;
            }

            double limit = Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(torch[i]));
            if (!(Math.Abs(ours[i] - torch[i]) <= limit))
            {
                Assert.Fail($"{what} ({c}): element {i} is {ours[i]}, libtorch {torch[i]}, |diff| {Math.Abs(ours[i] - torch[i]):E3} > {limit:E3}");
            }
        }
    }
}
