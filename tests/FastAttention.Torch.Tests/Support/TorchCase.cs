using FastAttention.Tests.Support;

namespace FastAttention.Torch.Tests.Support;

/// <summary>
/// One random comparison case, drawn from its seed: batch, heads with grouped-query key/value heads, awkward
/// sizes (nq and nk drawn independently, so mostly nq != nk), causal, scale, and for exact attention an additive
/// bias and a boolean mask (both [nq, nk]). Causal with nq &gt; nk and sparse masks leave rows that see no key.
/// </summary>
internal sealed record TorchCase(int Seed, AttentionShape Shape, bool Causal, float? Scale, float[]? Bias, bool[]? Mask)
{
    private static readonly int[] Sizes = [1, 2, 7, 31, 33, 113, 257]; // 257: more than one 192-key tile of the backward
    private static readonly int[] Dims = [1, 8, 15, 64];

    public static IEnumerable<object[]> Seeds(int count) => Enumerable.Range(1, count).Select(seed => new object[] { seed });

    public static TorchCase Draw(int seed, bool withBias)
    {
        var random = new Random(seed);
        int kvHeads = random.Next(1, 3);
        int heads = kvHeads * random.Next(1, 4);
        int nq = Sizes[random.Next(Sizes.Length)];
        int nk = Sizes[random.Next(Sizes.Length)];
        int d = Dims[random.Next(Dims.Length)];
        int dv = random.Next(2) == 0 ? d : Dims[random.Next(Dims.Length)];
        var shape = new AttentionShape(random.Next(1, 3), heads, nq, nk, d, dv, kvHeads);
        bool causal = random.Next(2) == 0;
        float? scale = random.Next(2) == 0 ? null : 0.05f + (0.95f * random.NextSingle());
        float[]? bias = withBias && random.Next(3) == 0 ? Data.Normal((long)nq * nk, seed + 100) : null;
        bool[]? mask = random.Next(3) == 0 ? [.. Enumerable.Range(0, nq * nk).Select(_ => random.NextDouble() < 0.8)] : null;
        return new TorchCase(seed, shape, causal, scale, bias, mask);
    }

    /// <summary>The scale our methods use when <see cref="Scale"/> is null.</summary>
    public double ScaleOr(double fallback) => Scale ?? fallback;

    public override string ToString() =>
        $"seed {Seed}: {Shape}, causal {Causal}, scale {Scale?.ToString("G4") ?? "default"}, bias {Bias is not null}, mask {Mask is not null}";
}
