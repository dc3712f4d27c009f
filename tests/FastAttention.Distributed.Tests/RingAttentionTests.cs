using FastAttention.Distributed.Tests.Support;
using FastAttention.Tests.Support;
using FastAttention.Distributed.Worker;

namespace FastAttention.Distributed.Tests;

/// <summary>
/// Ring attention against the one-process <see cref="ExactAttention"/> and the float64 reference (bounds declared in
/// <see cref="RingCheck"/>), on LocalCommunicator ranks (P = 1..4) and under mpiexec (-n 2, 3, 4).
/// </summary>
public class RingAttentionTests
{
    // (batch, heads, kvHeads, n, d, dv): one token; n below P and d = 1; GQA with n = 33; n = 113, d = 59, kv shared by
    // all heads; d = 64 with n = 13 not divisible by 2P.
    private static readonly (int B, int H, int Kv, int N, int D, int Dv)[] Shapes = [(1, 1, 1, 1, 8, 8), (1, 2, 2, 3, 1, 1), (2, 4, 2, 33, 8, 9), (1, 2, 1, 113, 59, 59), (1, 1, 1, 13, 64, 64)];

    public static TheoryData<int, ShardLayout, bool, int> Grid()
    {
        var data = new TheoryData<int, ShardLayout, bool, int>();
        for (int p = 1; p <= 4; p++)
        {
            foreach (var layout in new[] { ShardLayout.Contiguous, ShardLayout.ZigZag })
            {
                foreach (bool causal in new[] { false, true })
                {
                    for (int c = 0; c < Shapes.Length; c++)
                    {
                        data.Add(p, layout, causal, c);
                    }
                }
            }
        }

        return data;
    }

    private static AttentionShape ShapeOf(int c)
    {
        var (b, h, kv, n, d, dv) = Shapes[c];
        return new AttentionShape(b, h, n, n, d, dv, kv);
    }

    private static RingAttentionOptions Options(ShardLayout layout, bool causal, bool onCallingThread = false) =>
        new() { Attention = new ExactAttentionOptions { Causal = causal, MaxDegreeOfParallelism = 1 }, Layout = layout, ComputeOnCallingThread = onCallingThread };

    [Theory]
    [MemberData(nameof(Grid))]
    public void Forward_and_backward_match_one_process_and_float64(int ranks, ShardLayout layout, bool causal, int shape)
    {
        var errors = LocalCommunicator.Run(ranks, comm => RingCheck.Run(comm, ShapeOf(shape), Options(layout, causal), 17 + shape));
        Assert.All(errors, e => Assert.True(e.Pass, $"P {ranks} {layout} causal={causal} {ShapeOf(shape)}: {e}"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void One_rank_gives_the_one_process_bits(bool causal)
    {
        var shape = ShapeOf(2);
        var (q, k, v) = Data.Inputs(shape, 5);
        float[] expected = new float[shape.OutputLength], expectedLse = new float[shape.OutputLength / shape.ValueDim];
        ExactAttention.Compute(q, k, v, shape, expected, expectedLse, new ExactAttentionOptions { Causal = causal });
        float[] output = new float[expected.Length], lse = new float[expectedLse.Length];
        RingAttention.Compute(Communicator.SingleProcess(), q, k, v, shape, output, lse, Options(ShardLayout.Contiguous, causal));
        Assert.Equal(expected, output);
        Assert.Equal(expectedLse, lse);
    }

    [Fact]
    public void The_calling_thread_and_a_worker_give_the_same_bits()
    {
        var shape = ShapeOf(3);
        float[][] Run(bool onCallingThread) => LocalCommunicator.Run(3, comm =>
        {
            var (q, k, v) = Shards(comm, shape, ShardLayout.ZigZag, 9);
            float[] output = new float[v.Length / shape.EffectiveKeyValueHeads * shape.HeadCount], lse = new float[output.Length / shape.ValueDim];
            RingAttention.Compute(comm, q, k, v, shape, output, lse, Options(ShardLayout.ZigZag, true, onCallingThread));
            return output;
        });
        Assert.Equal(Run(false), Run(true));
    }

    [Theory]
    [InlineData(ShardLayout.Contiguous, false)]
    [InlineData(ShardLayout.ZigZag, true)]
    [InlineData(ShardLayout.Contiguous, true)]
    public void Each_step_sends_the_block_it_holds_and_causal_flops_add_up(ShardLayout layout, bool causal)
    {
        var shape = ShapeOf(2);
        int p = 3;
        var runs = LocalCommunicator.Run(p, comm =>
        {
            var (q, k, v) = Shards(comm, shape, layout, 3);
            float[] output = new float[q.Length / shape.HeadDim * shape.ValueDim], lse = new float[q.Length / shape.HeadDim];
            return RingAttention.Compute(comm, q, k, v, shape, output, lse, Options(layout, causal));
        });
        for (int r = 0; r < p; r++)
        {
            Assert.Equal(p, runs[r].Steps);
            for (int s = 0; s < p; s++)
            {
                long held = SequenceShard.For(shape.QueryCount, (r - s + p) % p, p, layout).Count;
                long block = held * shape.BatchSize * shape.EffectiveKeyValueHeads * (shape.HeadDim + shape.ValueDim) * sizeof(float);
                Assert.Equal(s < p - 1 ? block : 0, runs[r].StepBytes[s]);
            }
        }

        var (gq, gk, gv) = Data.Inputs(shape, 3);
        double whole = ExactAttention.Compute(gq, gk, gv, shape, new float[shape.OutputLength], new ExactAttentionOptions { Causal = causal }).Flops;
        Assert.Equal(whole, runs.Sum(r => r.Flops), 6);
    }

    [Fact]
    public void A_wrong_shard_length_on_one_rank_stops_every_rank_with_its_name()
    {
        var shape = ShapeOf(2);
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(3, comm =>
        {
            var (q, k, v) = Shards(comm, shape, ShardLayout.ZigZag, 1);
            float[] output = new float[q.Length / shape.HeadDim * shape.ValueDim], lse = new float[q.Length / shape.HeadDim];
            return RingAttention.Compute(comm, comm.Rank == 1 ? q.AsSpan(1) : q, k, v, shape, output, lse, Options(ShardLayout.ZigZag, true));
        }));
        Assert.StartsWith("rank 1 of 3: queryShard has ", error.Message, StringComparison.Ordinal);
        Assert.Contains("localN = ", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_wrong_gradient_length_in_the_backward_is_named()
    {
        var shape = ShapeOf(2);
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(2, comm =>
        {
            var (q, k, v) = Shards(comm, shape, ShardLayout.Contiguous, 1);
            float[] output = new float[q.Length / shape.HeadDim * shape.ValueDim], lse = new float[q.Length / shape.HeadDim];
            return RingAttention.Backward(comm, q, k, v, output, output, lse, shape, new float[q.Length], new float[k.Length + (comm.Rank == 0 ? 1 : 0)], new float[v.Length],
                Options(ShardLayout.Contiguous, false));
        }));
        Assert.StartsWith("rank 0 of 2: keyGradientShard has ", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_nan_key_on_one_rank_is_refused_on_every_rank_before_the_ring()
    {
        var shape = ShapeOf(2);
        var errors = LocalCommunicator.Run(3, comm =>
        {
            var (q, k, v) = Shards(comm, shape, ShardLayout.ZigZag, 1);
            k[5] = comm.Rank == 2 ? float.NaN : k[5];
            float[] output = new float[q.Length / shape.HeadDim * shape.ValueDim], lse = new float[q.Length / shape.HeadDim];
            try
            {
                RingAttention.Compute(comm, q, k, v, shape, output, lse, Options(ShardLayout.ZigZag, true));
                return "no error";
            }
            catch (DistributedException e)
            {
                return e.Message;
            }
        });
        Assert.All(errors, e => Assert.Equal("rank 2 of 3: keyShard[5] is NaN; set options.Attention.AllowNonFinite to let non-finite inputs through. (Parameter 'keyShard')", e));
    }

    /// <summary>
    /// Finite inputs whose block overflows on rank 0 only: with equal weights its block of two values of 2e38 sums past float32,
    /// while rank 1's queries pick one key and never add two. Rank 0's work stops, the ring still completes, and both ranks throw
    /// the same agreed error (not rank 0 alone, with rank 1 waiting for a block that never comes).
    /// </summary>
    [Fact]
    public void A_block_that_overflows_on_one_rank_stops_every_rank_with_the_same_error()
    {
        var shape = AttentionShape.SingleHead(4, 2);
        float[] key = [10, 0, 0, 0, 0, 0, 0, 0], value = [2e38f, 2e38f, 2e38f, 2e38f, 1, 1, 1, 1];
        var errors = LocalCommunicator.Run(2, comm =>
        {
            var shard = SequenceShard.For(4, comm.Rank, 2, ShardLayout.Contiguous);
            float[] q = comm.Rank == 0 ? [0, 0, 0, 0] : [100, 0, 100, 0], k = new float[4], v = new float[4];
            ShardTensors.Take(key, shard, 2, k);
            ShardTensors.Take(value, shard, 2, v);
            float[] output = new float[4], lse = new float[2];
            try
            {
                RingAttention.Compute(comm, q, k, v, shape, output, lse, Options(ShardLayout.Contiguous, false));
                return (Agreed: false, Message: "no error");
            }
            catch (DistributedException e)
            {
                return (e.Agreed, e.Message);
            }
        }, TimeSpan.FromSeconds(30));
        Assert.All(errors, e => Assert.True(e.Agreed, e.Message));
        Assert.All(errors, e => Assert.StartsWith("rank 0 of 2: ", e.Message, StringComparison.Ordinal));
        Assert.Equal(errors[0].Message, errors[1].Message);
    }

    [Fact]
    public void Ranks_with_different_shapes_are_refused_before_any_block_moves()
    {
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(2, comm =>
        {
            var shape = ShapeOf(2) with { HeadDim = comm.Rank == 1 ? 7 : 8 };
            var (q, k, v) = Shards(comm, shape, ShardLayout.Contiguous, 1);
            float[] output = new float[q.Length / shape.HeadDim * shape.ValueDim], lse = new float[q.Length / shape.HeadDim];
            return RingAttention.Compute(comm, q, k, v, shape, output, lse, Options(ShardLayout.Contiguous, false));
        }));
        Assert.Contains("every rank must pass the same global shape and options: rank 0 has (2, 4, 33, 33, 8,", error.Message, StringComparison.Ordinal);
        Assert.Contains("rank 1 has (2, 4, 33, 33, 7,", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("nq")]
    [InlineData("bias")]
    [InlineData("heads")]
    public void Unsupported_inputs_are_refused_by_name(string what)
    {
        var shape = what switch
        {
            "nq" => new AttentionShape(1, 1, 8, 9, 4, 4),
            "heads" => new AttentionShape(1, 3, 8, 8, 4, 4, 2),
            _ => new AttentionShape(1, 1, 8, 8, 4, 4),
        };
        var options = Options(ShardLayout.Contiguous, false);
        if (what == "bias")
        {
            options = options with { Attention = options.Attention with { Bias = new float[64] } };
        }

        var error = Assert.Throws<DistributedException>(() => RingAttention.Compute(Communicator.SingleProcess(), new float[shape.QueryLength], new float[shape.KeyLength],
            new float[shape.ValueLength], shape, new float[shape.OutputLength], new float[8 * shape.HeadCount], options));
        var inner = Assert.IsAssignableFrom<ArgumentException>(error.InnerException);
        Assert.Equal(what == "bias" ? "options" : "globalShape", inner.ParamName);
        Assert.Contains(what switch { "nq" => "must equal KeyCount", "bias" => "no bias", _ => "must divide heads" }, error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Mpi_ring_matches_one_process(int ranks)
    {
        var result = MpiJob.Worker(ranks, "ring");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(ranks, result.RankLines.Count(l => l.Contains(": ok Contiguous output", StringComparison.Ordinal)));
    }

    /// <summary>This rank's shards of seeded global inputs.</summary>
    private static (float[] Q, float[] K, float[] V) Shards(Communicator comm, AttentionShape shape, ShardLayout layout, int seed)
    {
        var (q, k, v) = Data.Inputs(shape, seed);
        var mine = SequenceShard.For(shape.QueryCount, comm.Rank, comm.Size, layout);
        float[] Take(float[] global, int width)
        {
            float[] local = new float[global.Length / shape.QueryCount * mine.Count];
            ShardTensors.Take(global, mine, width, local);
            return local;
        }

        return (Take(q, shape.HeadDim), Take(k, shape.HeadDim), Take(v, shape.ValueDim));
    }
}
