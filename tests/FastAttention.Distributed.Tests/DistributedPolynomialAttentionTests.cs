using FastAttention.Distributed.Tests.Support;
using FastAttention.Distributed.Worker;

namespace FastAttention.Distributed.Tests;

public class DistributedPolynomialAttentionTests
{
    public static TheoryData<int, string> Cases()
    {
        var data = new TheoryData<int, string>();
        foreach (int p in new[] { 1, 2, 3, 4 })
        {
            foreach (string c in new[] { "gqa", "few-keys", "one-token", "zigzag-batch" })
            {
                data.Add(p, c);
            }
        }

        return data;
    }

    /// <summary>
    /// One process's output and certificate against the sharded run: P = 1 gives the same bits; otherwise the key states are
    /// summed in another order, and both runs lie within the certificate's rounding bound of the exact polynomial attention,
    /// so they differ by at most twice it. Both lie within the output bound of exact softmax attention (plus 1e-5 for the
    /// float32 exact kernel).
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void Sharded_polynomial_attention_matches_one_process_within_its_rounding_bound(int ranks, string name)
    {
        (AttentionShape shape, ShardLayout layout) = Case(name);
        (float[] q, float[] k, float[] v) = DistributedLevAttentionTests.Inputs(shape, 60 + name.Length);
        var options = new PolynomialAttentionOptions { RelativeError = 1e-4 };
        float[] expected = new float[shape.OutputLength], exact = new float[shape.OutputLength];
        PolynomialCertificate single = PolynomialAttention.Compute(q, k, v, shape, expected, options);
        ExactAttention.Compute(q, k, v, shape, exact);

        var results = LocalCommunicator.Run(ranks, comm =>
        {
            var queryShard = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, layout);
            var keyShard = SequenceShard.For(shape.KeyCount, comm.Rank, comm.Size, layout);
            float[] local = new float[(long)shape.BatchSize * shape.HeadCount * queryShard.Count * shape.ValueDim];
            PolynomialCertificate certificate = DistributedPolynomialAttention.Compute(comm, ShardSlices.Take(q, queryShard, shape.HeadDim), ShardSlices.Take(k, keyShard, shape.HeadDim),
                ShardSlices.Take(v, keyShard, shape.ValueDim), shape, queryShard, keyShard, local, options);
            return (certificate, local, queryShard);
        });

        float[] output = new float[shape.OutputLength];
        foreach (var (certificate, local, queryShard) in results)
        {
            ShardSlices.Place(local, queryShard, shape.ValueDim, output);
            Assert.Equal((single.Range, single.Degree, single.Rank, single.PredictedFlops, single.PolynomialRelativeError), (certificate.Range, certificate.Degree, certificate.Rank, certificate.PredictedFlops, certificate.PolynomialRelativeError));
            Assert.True(certificate.RoundingBound >= single.RoundingBound && certificate.RoundingBound <= 2 * single.RoundingBound, $"rounding bound {certificate.RoundingBound} vs one process {single.RoundingBound}");
            Assert.Equal(results[0].certificate, certificate);
        }

        if (ranks == 1)
        {
            Assert.Equal(expected, output);
        }

        double bound = results[0].certificate.RoundingBound;
        for (int i = 0; i < output.Length; i++)
        {
            Assert.True(Math.Abs(output[i] - expected[i]) <= 2 * bound, $"output {i}: {output[i]} vs one process {expected[i]}, rounding bound {bound}");
            Assert.True(Math.Abs(output[i] - exact[i]) <= results[0].certificate.OutputBound + 1e-5, $"output {i}: {output[i]} vs exact {exact[i]}, bound {results[0].certificate.OutputBound}");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Sharded_polynomial_tensor_attention_matches_one_process(int ranks)
    {
        var shape = new TensorAttentionShape(2, 9, 10, 3, 2, Order: 3);
        float[] q = ShardSlices.Normal(shape.QueryLength, 71);
        float[][] k = [ShardSlices.Normal(shape.KeyLength, 72), ShardSlices.Normal(shape.KeyLength, 73)], v = [ShardSlices.Normal(shape.ValueLength, 74), ShardSlices.Normal(shape.ValueLength, 75)];
        float[] expected = new float[shape.OutputLength];
        PolynomialCertificate single = TensorAttention.ComputePolynomial(q, [k[0], k[1]], [v[0], v[1]], shape, expected);

        var results = LocalCommunicator.Run(ranks, comm =>
        {
            var queryShard = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, ShardLayout.Contiguous);
            var keyShard = SequenceShard.For(shape.KeyCount, comm.Rank, comm.Size, ShardLayout.ZigZag);
            float[] local = new float[shape.HeadCount * queryShard.Count * shape.ValueDim];
            PolynomialCertificate certificate = DistributedPolynomialAttention.ComputeTensor(comm, ShardSlices.Take(q, queryShard, 3),
                [.. k.Select(x => (ReadOnlyMemory<float>)ShardSlices.Take(x, keyShard, 3))], [.. v.Select(x => (ReadOnlyMemory<float>)ShardSlices.Take(x, keyShard, 2))], shape, queryShard, keyShard, local);
            return (certificate, local, queryShard);
        });

        float[] output = new float[shape.OutputLength];
        foreach (var (certificate, local, queryShard) in results)
        {
            ShardSlices.Place(local, queryShard, shape.ValueDim, output);
            Assert.Equal((single.Range, single.Degree, single.Rank, single.PolynomialRelativeError), (certificate.Range, certificate.Degree, certificate.Rank, certificate.PolynomialRelativeError));
            Assert.InRange(certificate.RoundingBound, single.RoundingBound, 2 * single.RoundingBound);
        }

        if (ranks == 1)
        {
            Assert.Equal(expected, output);
        }

        for (int i = 0; i < output.Length; i++)
        {
            Assert.True(Math.Abs(output[i] - expected[i]) <= 2 * results[0].certificate.RoundingBound, $"output {i}: {output[i]} vs one process {expected[i]}");
        }
    }

    [Fact]
    public void Causal_is_refused_on_every_rank_before_any_message()
    {
        AttentionShape shape = new(1, 1, 4, 4, 2, 2);
        var errors = LocalCommunicator.Run(2, comm => Record.Exception(() =>
        {
            var shard = SequenceShard.For(4, comm.Rank, 2, ShardLayout.Contiguous);
            DistributedPolynomialAttention.Compute(comm, new float[4], new float[4], new float[4], shape, shard, shard, new float[4], new PolynomialAttentionOptions { Causal = true });
        }));
        Assert.All(errors, e => Assert.Equal("options", Assert.IsType<ArgumentException>(e).ParamName));
        Assert.All(errors, e => Assert.Contains("Causal is not supported with sharded keys", e!.Message, StringComparison.Ordinal));
    }

    [Fact]
    public void A_non_finite_value_on_one_rank_stops_every_rank_naming_it()
    {
        AttentionShape shape = new(1, 1, 6, 6, 2, 2);
        (float[] q, float[] k, float[] v) = DistributedLevAttentionTests.Inputs(shape, 5);
        v[(4 * 2) + 1] = float.PositiveInfinity; // key 4: rank 2's first row
        var errors = LocalCommunicator.Run(3, comm => Record.Exception(() =>
        {
            var shard = SequenceShard.For(6, comm.Rank, 3, ShardLayout.Contiguous);
            DistributedPolynomialAttention.Compute(comm, ShardSlices.Take(q, shard, 2), ShardSlices.Take(k, shard, 2), ShardSlices.Take(v, shard, 2), shape, shard, shard, new float[shard.Count * 2]);
        }));
        Assert.All(errors, e => Assert.Equal("rank 2 of 3: value: value 1 of local row 0 is Infinity; the polynomial method needs finite inputs. (Parameter 'value')", Assert.IsType<DistributedException>(e).Message));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Mpi_sharded_polynomial_and_tensor_attention_match_one_process(int ranks)
    {
        var result = MpiJob.Worker(ranks, "polynomial");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(ranks, result.RankLines.Count(l => l.Contains(": ok polynomial ", StringComparison.Ordinal)));
    }

    private static (AttentionShape Shape, ShardLayout Layout) Case(string name) => name switch
    {
        "gqa" => (new AttentionShape(1, 4, 13, 29, 4, 3, KeyValueHeadCount: 2), ShardLayout.Contiguous),
        "few-keys" => (new AttentionShape(1, 2, 2, 3, 3, 2), ShardLayout.Contiguous),
        "one-token" => (new AttentionShape(1, 1, 1, 1, 4, 4), ShardLayout.ZigZag),
        "zigzag-batch" => (new AttentionShape(2, 2, 37, 23, 3, 5, KeyValueHeadCount: 1), ShardLayout.ZigZag),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown case"),
    };
}
