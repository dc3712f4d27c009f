using FastAttention.Distributed.Tests.Support;

namespace FastAttention.Distributed.Tests;

public class CommunicatorTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Local_collectives_give_every_rank_the_same_bits(int size)
    {
        double[][] sums = LocalCommunicator.Run(size, comm =>
        {
            // Values whose float sum depends on the order: the rank-order sum must come out on every rank.
            double[] values = [0.1 * (comm.Rank + 1), 1e16 * (comm.Rank % 2 == 0 ? 1 : -1), comm.Rank];
            comm.AllreduceSum(values);
            return values;
        });
        double expected0 = 0;
        for (int r = 0; r < size; r++)
        {
            expected0 += 0.1 * (r + 1);
        }

        Assert.All(sums, s => Assert.Equal(expected0, s[0]));
        Assert.All(sums, s => Assert.Equal(sums[0], s));
    }

    [Fact]
    public void Local_allgather_takes_different_lengths_and_broadcast_copies_the_root()
    {
        var results = LocalCommunicator.Run(3, comm =>
        {
            int[][] all = comm.Allgather<int>(Enumerable.Repeat(comm.Rank, comm.Rank * 2).ToArray());
            float[] data = comm.Rank == 2 ? [4f, 5f] : new float[2];
            comm.Broadcast<float>(data, 2);
            return (all, data);
        });
        foreach (var (all, data) in results)
        {
            Assert.Equal([0, 2, 4], all.Select(a => a.Length));
            Assert.Equal([4f, 5f], data);
        }
    }

    [Fact]
    public void A_failing_rank_makes_every_rank_stop_with_its_message()
    {
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(3, comm =>
        {
            comm.Agree(comm.Rank == 1 ? new InvalidDataException("shard k.npy: row 4 is NaN") : null);
            return 0;
        }));
        Assert.Equal("rank 1 of 3: shard k.npy: row 4 is NaN", error.Message);
        Assert.Equal(1, error.FailedRank);
    }

    [Fact]
    public void A_rank_that_throws_outside_a_collective_does_not_hang_the_others()
    {
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(2, comm =>
        {
            if (comm.Rank == 0)
            {
                throw new InvalidOperationException("boom");
            }

            comm.Receive<float>(new float[4], 0, 3); // would wait forever without the failure propagating
            return 0;
        }, TimeSpan.FromSeconds(60)));
        Assert.Contains("boom", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_missing_message_times_out_naming_the_peer()
    {
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(2, comm =>
        {
            if (comm.Rank == 1)
            {
                comm.Receive<float>(new float[4], 0, 3);
            }

            return 0;
        }, TimeSpan.FromMilliseconds(200)));
        Assert.Contains("no message from rank 0 (tag 3)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_message_of_the_wrong_length_is_refused()
    {
        var error = Assert.Throws<DistributedException>(() => LocalCommunicator.Run(2, comm =>
        {
            if (comm.Rank == 0)
            {
                comm.Send<float>(new float[3], 1, 0);
            }
            else
            {
                comm.Receive<float>(new float[4], 0, 0);
            }

            return 0;
        }));
        Assert.Contains("sent 12 bytes with tag 0, 16 were expected", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_failure_with_an_empty_message_still_stops_every_rank()
    {
        var messages = LocalCommunicator.Run(2, comm =>
        {
            try
            {
                comm.Agree(comm.Rank == 1 ? new InvalidOperationException("") : null);
                return "no failure";
            }
            catch (DistributedException e) when (e.Agreed)
            {
                return e.Message;
            }
        });
        Assert.All(messages, m => Assert.Equal("rank 1 of 2: InvalidOperationException", m));
    }

    [Fact]
    public void Messages_of_chars_and_bools_count_their_real_bytes()
    {
        var received = LocalCommunicator.Run(2, comm =>
        {
            if (comm.Rank == 0)
            {
                comm.Send<char>("abc".ToCharArray(), 1, 0);
                comm.Send<bool>(new[] { true, false, true }, 1, 1);
                return (comm.BytesSent, "");
            }

            char[] text = new char[3];
            bool[] flags = new bool[3];
            comm.Receive<char>(text, 0, 0);
            comm.Receive<bool>(flags, 0, 1);
            return (comm.BytesSent, new string(text) + string.Join(",", flags));
        });
        Assert.Equal(6 + 3, received[0].BytesSent);
        Assert.Equal("abcTrue,False,True", received[1].Item2);
    }

    [Fact]
    public void Bad_peers_and_tags_are_refused_before_anything_is_sent()
    {
        LocalCommunicator.Run(2, comm =>
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => comm.StartSend<float>(new float[1], comm.Rank, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => comm.StartSend<float>(new float[1], 2, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => comm.StartReceive<float>(new float[1], 1 - comm.Rank, Communicator.MaxTag + 1));
            return 0;
        });
    }

    [Fact]
    public void Mpi_refuses_a_process_not_started_by_mpiexec()
    {
        Assert.False(MpiCommunicator.StartedByMpiexec);
        var error = Assert.Throws<DistributedException>(MpiCommunicator.Start);
        Assert.Contains("not started by mpiexec", error.Message, StringComparison.Ordinal);
        using var alone = Communicator.FromEnvironment();
        Assert.Equal((0, 1), (alone.Rank, alone.Size));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Mpi_collectives_and_ring_messages_work_under_mpiexec(int ranks)
    {
        var result = MpiJob.Worker(ranks, "smoke");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(ranks, result.RankLines.Count(l => l.Contains(": ok MPI (", StringComparison.Ordinal)));
    }

    [Fact]
    public void Mpi_failure_on_one_rank_stops_every_rank_with_one_message()
    {
        var result = MpiJob.Worker(3, "agree-failure", "2");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Equal(3, result.RankLines.Count(l => l.EndsWith("FAIL rank 2 of 3: shard q.npy: value 3 of row 7 is NaN", StringComparison.Ordinal)));
    }
}
