using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Distributed.Tests;

/// <summary>
/// The CLI's distributed flow in process, over thread ranks: each rank reads its rows of Q, K, V with
/// <see cref="NumpyFile.ReadRows"/>, runs ring attention, and writes its rows of one output with <see cref="NumpySliceWriter"/>;
/// rank 0 commits after a barrier. The file must be the one-process result (bound: the exact kernels' 2e-5 + 1e-4 |ref|, for the
/// ring's float32 merge of block partials) and, read back by rows, each rank's own rows.
/// </summary>
public class ShardedFileTests
{
    public static TheoryData<int, int, bool> Cases()
    {
        var cases = new TheoryData<int, int, bool>();
        foreach (int ranks in new[] { 1, 2, 3, 4 })
        {
            foreach (int n in new[] { 1, 3, 37 })
            {
                cases.Add(ranks, n, n != 3);
            }
        }

        return cases;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Ranks_reading_and_writing_their_rows_make_the_one_process_file(int ranks, int n, bool causal)
    {
        string dir = Data.TempDir();
        var shape = new AttentionShape(2, 2, n, n, 8, 5);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 7);
        NumpyFile.Write(Path.Combine(dir, "q.npy"), new TensorData<float>(q, 2, 2, n, 8));
        NumpyFile.Write(Path.Combine(dir, "k.npy"), new TensorData<float>(k, 2, 2, n, 8));
        NumpyFile.Write(Path.Combine(dir, "v.npy"), new TensorData<float>(v, 2, 2, n, 5));
        var expected = new float[shape.OutputLength];
        ExactAttention.Compute(q, k, v, shape, expected, new ExactAttentionOptions { Causal = causal });
        string temp = Path.Combine(dir, ".out.tmp"), destination = Path.Combine(dir, "out.npy");
        ShardLayout layout = causal ? ShardLayout.ZigZag : ShardLayout.Contiguous;

        float[][] mine = LocalCommunicator.Run(ranks, comm =>
        {
            SequenceShard shard = SequenceShard.For(n, comm.Rank, comm.Size, layout);
            TensorData<float> qs = NumpyFile.ReadRows(Path.Combine(dir, "q.npy"), shard.Ranges);
            TensorData<float> ks = NumpyFile.ReadRows(Path.Combine(dir, "k.npy"), shard.Ranges);
            TensorData<float> vs = NumpyFile.ReadRows(Path.Combine(dir, "v.npy"), shard.Ranges);
            var rows = new float[4 * shard.Count * 5];
            RingAttention.Compute(comm, qs.Data, ks.Data, vs.Data, shape, rows, new float[4 * shard.Count],
                new RingAttentionOptions { Attention = new ExactAttentionOptions { Causal = causal }, Layout = layout });

            using NumpySliceWriter? owner = comm.Rank == 0 ? NumpySliceWriter.Create(temp, [2, 2, n, 5]) : null;
            comm.Barrier();
            if (owner is not null)
            {
                owner.WriteRows(rows, shard.Ranges);
            }
            else
            {
                using NumpySliceWriter writer = NumpySliceWriter.Open(temp, [2, 2, n, 5]);
                writer.WriteRows(rows, shard.Ranges);
            }

            comm.Barrier();
            owner?.Commit(destination, overwrite: false);
            return rows;
        });

        TensorData<float> written = NumpyFile.ReadFloat32(destination);
        Assert.Equal([2, 2, n, 5], written.Shape);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(written.Data[i] - expected[i]) <= Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(expected[i])), $"element {i}: {written.Data[i]} vs {expected[i]}");
        }

        for (int r = 0; r < ranks; r++)
        {
            Assert.Equal(mine[r], NumpyFile.ReadRows(destination, SequenceShard.For(n, r, ranks, layout).Ranges).Data);
        }

        Assert.False(File.Exists(temp));
    }
}
