namespace FastAttention.Distributed.Worker;

public static partial class Scenarios
{
    /// <summary>
    /// Sharded polynomial-method attention (GQA, zig-zag keys) and polynomial tensor attention (order 3) against one process:
    /// every rank checks its query rows within twice the certificate's rounding bound and the certificate's range and degree.
    /// </summary>
    [Scenario("polynomial")]
    private static string Polynomial(Communicator comm, string[] args)
    {
        var shape = new AttentionShape(1, 4, 21, 33, 4, 3, KeyValueHeadCount: 2);
        float[] q = ShardSlices.Normal(shape.QueryLength, 31), k = ShardSlices.Normal(shape.KeyLength, 32), v = ShardSlices.Normal(shape.ValueLength, 33);
        var options = new PolynomialAttentionOptions { RelativeError = 1e-4 };
        float[] expected = new float[shape.OutputLength];
        PolynomialCertificate single = PolynomialAttention.Compute(q, k, v, shape, expected, options);
        var queryShard = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, ShardLayout.Contiguous);
        var keyShard = SequenceShard.For(shape.KeyCount, comm.Rank, comm.Size, ShardLayout.ZigZag);
        float[] local = new float[shape.HeadCount * queryShard.Count * shape.ValueDim];
        PolynomialCertificate certificate = DistributedPolynomialAttention.Compute(comm, ShardSlices.Take(q, queryShard, shape.HeadDim), ShardSlices.Take(k, keyShard, shape.HeadDim),
            ShardSlices.Take(v, keyShard, shape.ValueDim), shape, queryShard, keyShard, local, options);
        Require(certificate.Range == single.Range && certificate.Degree == single.Degree, $"certificate R {certificate.Range} g {certificate.Degree}, one process R {single.Range} g {single.Degree}");
        RequireClose(ShardSlices.Take(expected, queryShard, shape.ValueDim), local, 2 * certificate.RoundingBound, "polynomial");

        var tensor = new TensorAttentionShape(2, 8, 11, 3, 2, Order: 3);
        float[] tq = ShardSlices.Normal(tensor.QueryLength, 41);
        float[][] tk = [ShardSlices.Normal(tensor.KeyLength, 42), ShardSlices.Normal(tensor.KeyLength, 43)], tv = [ShardSlices.Normal(tensor.ValueLength, 44), ShardSlices.Normal(tensor.ValueLength, 45)];
        float[] tensorExpected = new float[tensor.OutputLength];
        PolynomialCertificate tensorSingle = TensorAttention.ComputePolynomial(tq, [tk[0], tk[1]], [tv[0], tv[1]], tensor, tensorExpected);
        var tensorQueries = SequenceShard.For(tensor.QueryCount, comm.Rank, comm.Size, ShardLayout.ZigZag);
        var tensorKeys = SequenceShard.For(tensor.KeyCount, comm.Rank, comm.Size, ShardLayout.Contiguous);
        float[] tensorLocal = new float[tensor.HeadCount * tensorQueries.Count * tensor.ValueDim];
        PolynomialCertificate tensorCertificate = DistributedPolynomialAttention.ComputeTensor(comm, ShardSlices.Take(tq, tensorQueries, 3),
            [.. tk.Select(x => (ReadOnlyMemory<float>)ShardSlices.Take(x, tensorKeys, 3))], [.. tv.Select(x => (ReadOnlyMemory<float>)ShardSlices.Take(x, tensorKeys, 2))], tensor, tensorQueries, tensorKeys, tensorLocal);
        Require(tensorCertificate.Range == tensorSingle.Range && tensorCertificate.Degree == tensorSingle.Degree, "tensor certificate differs from one process");
        RequireClose(ShardSlices.Take(tensorExpected, tensorQueries, tensor.ValueDim), tensorLocal, 2 * tensorCertificate.RoundingBound, "tensor");
        return $"polynomial g {certificate.Degree} r {certificate.Rank}, tensor g {tensorCertificate.Degree}; {comm.BytesSent} bytes sent";
    }

    private static void RequireClose(float[] expected, float[] actual, double tolerance, string what)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            Require(Math.Abs(expected[i] - actual[i]) <= tolerance, $"{what} output {i}: {actual[i]} vs one process {expected[i]}, tolerance {tolerance}");
        }
    }

    /// <summary>
    /// A measurement, not a test: <c>polynomial-time n d</c> times one process's polynomial method (every rank runs it whole)
    /// against the sharded run (n queries and keys, one head) and checks the outputs agree within twice the rounding bound.
    /// </summary>
    [Scenario("polynomial-time")]
    private static string PolynomialTime(Communicator comm, string[] args)
    {
        int n = int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture), d = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        var shape = new AttentionShape(1, 1, n, n, d, d);
        var options = new PolynomialAttentionOptions { Scale = 0.5f / d };
        float[] q = ShardSlices.Normal(shape.QueryLength, 1), k = ShardSlices.Normal(shape.KeyLength, 2), v = ShardSlices.Normal(shape.ValueLength, 3), expected = new float[shape.OutputLength];
        var shard = SequenceShard.For(n, comm.Rank, comm.Size, ShardLayout.Contiguous);
        float[] localQ = ShardSlices.Take(q, shard, d), localK = ShardSlices.Take(k, shard, d), localV = ShardSlices.Take(v, shard, d), local = new float[localQ.Length];
        PolynomialCertificate certificate = null!;
        (double sharded, double whole) = TimeBoth(comm,
            () => certificate = DistributedPolynomialAttention.Compute(comm, localQ, localK, localV, shape, shard, shard, local, options),
            () => PolynomialAttention.Compute(q, k, v, shape, expected, options));
        RequireClose(ShardSlices.Take(expected, shard, d), local, 2 * certificate.RoundingBound, "polynomial");
        return $"polynomial-time n {n} d {d} g {certificate.Degree} r {certificate.Rank}: sharded {sharded:F1} ms, one process {whole:F1} ms, {comm.BytesSent} bytes sent";
    }
}
