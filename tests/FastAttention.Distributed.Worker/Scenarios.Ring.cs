using System.Globalization;

namespace FastAttention.Distributed.Worker;

/// <summary>How far one ring run (forward and backward) landed from the one-process results and the float64 reference, with the bounds it must meet.</summary>
/// <param name="Output">Max over elements of |ring - one process| / (max |V| + 1): the merge re-associates the softmax sums.</param>
/// <param name="LogSumExp">Max |ring - one process| / (|one process| + 1) of the log-sum-exp.</param>
/// <param name="OutputVsReference">Max |ring - float64| / (atol + rtol |float64|) with the core's exact-kernel tolerance (must be at most 1).</param>
/// <param name="Gradient">Max over dQ, dK, dV of max |ring - one process| / max(1, max |one process|).</param>
/// <param name="GradientVsReference">Max over dQ, dK, dV of max |ring - float64| / max(1, max |float64|).</param>
/// <param name="ForwardBound">The bound on <paramref name="Output"/> and <paramref name="LogSumExp"/> for this P (see <see cref="RingCheck.ForwardUlps"/>).</param>
public sealed record RingErrors(double Output, double LogSumExp, double OutputVsReference, double Gradient, double GradientVsReference, double ForwardBound)
{
    /// <summary>Whether every error is within its bound.</summary>
    public bool Pass => Output <= ForwardBound && LogSumExp <= ForwardBound && OutputVsReference <= 1 && Gradient <= RingCheck.GradientRelative && GradientVsReference <= RingCheck.GradientVsReferenceRelative;

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"output {Output:E2}, lse {LogSumExp:E2} (bound {ForwardBound:E2}), vs float64 {OutputVsReference:F3} of tolerance, gradients {Gradient:E2} (bound {RingCheck.GradientRelative:E0}), vs float64 {GradientVsReference:E2} (bound {RingCheck.GradientVsReferenceRelative:E0})");
}

/// <summary>
/// Runs ring attention forward and backward on seeded global inputs that every rank generates alike, each rank taking its
/// shard; gathers the shards and compares the whole output, log-sum-exp and gradients with the one-process
/// <see cref="ExactAttention"/> and with <see cref="ReferenceAttention"/> (float64). Used by the mpiexec scenario and, with
/// <see cref="LocalCommunicator"/>, by the xunit tests.
/// </summary>
public static class RingCheck
{
    /// <summary>
    /// Forward bound in float32 ulps (2^-24) per ring rank: a row merges at most 2P block partials, each merge rounds the
    /// rescale factor <c>e^(m_t - m)</c> and one fused multiply-add (about 2 ulps of the running row), the normalisation one
    /// more, and the one-process kernel rounds its own online softmax about as much; 16 ulps per rank (8 per piece) leaves
    /// a factor of 2 over that count. Scaled by max |V| + 1 because outputs are convex combinations of value rows.
    /// </summary>
    public const double ForwardUlps = 16;

    /// <summary>Gradients against the one-process backward, relative to max(1, max |gradient|): both sum the same float32 terms in another order.</summary>
    public const double GradientRelative = 2e-6;

    /// <summary>Gradients against the float64 reference, relative to max(1, max |gradient|): the core's tensor-backward tolerance.</summary>
    public const double GradientVsReferenceRelative = 5e-5;

    /// <summary>The core's exact-kernel tolerance against float64: |x - ref| &lt;= atol + rtol |ref|.</summary>
    public const double ExactAtol = 2e-5, ExactRtol = 1e-4;

    public static RingErrors Run(Communicator comm, AttentionShape shape, RingAttentionOptions options, int seed)
    {
        ArgumentNullException.ThrowIfNull(comm);
        int n = shape.QueryCount, d = shape.HeadDim, dv = shape.ValueDim;
        var random = new Random(seed);
        float[] q = Uniform(random, shape.QueryLength), k = Uniform(random, shape.KeyLength), v = Uniform(random, shape.ValueLength), dOut = Uniform(random, shape.OutputLength);
        var mine = SequenceShard.For(n, comm.Rank, comm.Size, options.Layout);
        float[] qs = Take(q, mine, d), ks = Take(k, mine, d), vs = Take(v, mine, dv), dos = Take(dOut, mine, dv);
        float[] os = new float[dos.Length], lses = new float[dos.Length / dv];
        RingAttention.Compute(comm, qs, ks, vs, shape, os, lses, options);
        float[] dqs = new float[qs.Length], dks = new float[ks.Length], dvs = new float[vs.Length];
        RingAttention.Backward(comm, qs, ks, vs, os, dos, lses, shape, dqs, dks, dvs, options);

        int outerQ = shape.BatchSize * shape.HeadCount, outerKv = shape.BatchSize * shape.EffectiveKeyValueHeads;
        float[] o = Gather(comm, os, options.Layout, n, outerQ, dv), lse = Gather(comm, lses, options.Layout, n, outerQ, 1);
        float[] dq = Gather(comm, dqs, options.Layout, n, outerQ, d), dk = Gather(comm, dks, options.Layout, n, outerKv, d), dvGathered = Gather(comm, dvs, options.Layout, n, outerKv, dv);

        var attention = options.Attention with { MaxDegreeOfParallelism = 1 };
        float[] o1 = new float[o.Length], lse1 = new float[lse.Length];
        ExactAttention.Compute(q, k, v, shape, o1, lse1, attention);
        float[] dq1 = new float[q.Length], dk1 = new float[k.Length], dv1 = new float[v.Length];
        ExactAttention.Backward(q, k, v, o1, dOut, lse1, shape, dq1, dk1, dv1, attention);
        double[] oRef = new double[o.Length], dqRef = new double[q.Length], dkRef = new double[k.Length], dvRef = new double[v.Length];
        ReferenceAttention.Compute(q, k, v, shape, oRef, attention.Scale, attention.Causal);
        ReferenceAttention.Backward(q, k, v, dOut, shape, dqRef, dkRef, dvRef, attention.Scale, attention.Causal);

        double vScale = v.Length == 0 ? 1 : v.Max(Math.Abs) + 1;
        double output = 0, lseError = 0, versusReference = 0;
        for (int i = 0; i < o.Length; i++)
        {
            output = Math.Max(output, Math.Abs(o[i] - o1[i]) / vScale);
            versusReference = Math.Max(versusReference, Math.Abs(o[i] - oRef[i]) / (ExactAtol + (ExactRtol * Math.Abs(oRef[i]))));
        }

        for (int i = 0; i < lse.Length; i++)
        {
            lseError = Math.Max(lseError, Math.Abs(lse[i] - lse1[i]) / (Math.Abs(lse1[i]) + 1));
        }

        double gradient = Math.Max(Relative(dq, dq1.Select(x => (double)x).ToArray()), Math.Max(Relative(dk, dk1.Select(x => (double)x).ToArray()), Relative(dvGathered, dv1.Select(x => (double)x).ToArray())));
        double gradientReference = Math.Max(Relative(dq, dqRef), Math.Max(Relative(dk, dkRef), Relative(dvGathered, dvRef)));
        return new RingErrors(output, lseError, versusReference, gradient, gradientReference, ForwardUlps * comm.Size * Math.Pow(2, -24));
    }

    private static float[] Uniform(Random random, long count)
    {
        float[] values = new float[count];
        for (long i = 0; i < count; i++)
        {
            values[i] = (2 * random.NextSingle()) - 1;
        }

        return values;
    }

    private static float[] Take(float[] global, SequenceShard shard, int width)
    {
        float[] local = new float[global.Length / shard.Length * shard.Count];
        ShardTensors.Take(global, shard, width, local);
        return local;
    }

    private static float[] Gather(Communicator comm, float[] local, ShardLayout layout, int n, int outer, int width)
    {
        float[][] all = comm.Allgather<float>(local);
        float[] global = new float[(long)outer * n * width];
        for (int r = 0; r < all.Length; r++)
        {
            ShardTensors.Place(all[r], SequenceShard.For(n, r, comm.Size, layout), width, global);
        }

        return global;
    }

    private static double Relative(float[] actual, double[] expected)
    {
        double scale = Math.Max(1, expected.Length == 0 ? 0 : expected.Max(Math.Abs)), max = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            max = Math.Max(max, Math.Abs(actual[i] - expected[i]));
        }

        return max / scale;
    }

}

public static partial class Scenarios
{
    /// <summary>
    /// Forward and backward under mpiexec against the one-process results. Arguments: n d [heads kvHeads batch] [causal|full]
    /// [contiguous|zigzag]; without arguments, a GQA shape with n not divisible by 2P, both layouts, causal and not.
    /// </summary>
    [Scenario("ring")]
    private static string Ring(Communicator comm, string[] args)
    {
        int Arg(int i, int fallback) => args.Length > i && int.TryParse(args[i], CultureInfo.InvariantCulture, out int x) ? x : fallback;
        int n = Arg(0, 37), d = Arg(1, 8), heads = Arg(2, 4), kvHeads = Arg(3, 2), batch = Arg(4, 2);
        var shape = new AttentionShape(batch, heads, n, n, d, d + 1, kvHeads);
        var results = new List<string>();
        foreach (bool causal in args.Contains("full") ? [false] : args.Contains("causal") ? [true] : new[] { false, true })
        {
            foreach (var layout in args.Contains("contiguous") ? [ShardLayout.Contiguous] : args.Contains("zigzag") ? [ShardLayout.ZigZag] : new[] { ShardLayout.Contiguous, ShardLayout.ZigZag })
            {
                var options = new RingAttentionOptions { Attention = new ExactAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 1 }, Layout = layout };
                var errors = RingCheck.Run(comm, shape, options, 1000 + n);
                Require(errors.Pass, $"{layout} causal={causal} {shape}: {errors}");
                results.Add(string.Create(CultureInfo.InvariantCulture, $"{layout}{(causal ? " causal" : "")} output {errors.Output:E1} grad {errors.Gradient:E1}"));
            }
        }

        return string.Join("; ", results);
    }
}
