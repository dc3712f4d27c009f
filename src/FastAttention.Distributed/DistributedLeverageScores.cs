using FastAttention.Leverage;

namespace FastAttention.Distributed;

/// <summary>
/// Leverage scores and sensitivity bounds of keys sharded over ranks (docs/algorithms.md §4): each rank sums its rows'
/// Gram matrix <c>K_r^T K_r</c> in double, the matrices are added over ranks in rank order
/// (<see cref="Communicator.AllreduceSum(Span{double})"/>, the same bits on every rank), and every rank scores its own rows
/// against the global matrix's factor. The scores equal the one-process <see cref="LeverageScores"/> up to the rounding of
/// the re-associated Gram sum (the factor is a pivoted Cholesky of a sum of n rank-one terms; each rank's rows score
/// exactly as the core scores them against that factor). Every rank must call these with the same dimension and p: a rank
/// whose d or p differs from rank 0's makes every rank throw, as a rank with invalid rows does.
/// </summary>
public static class DistributedLeverageScores
{
    /// <summary>The Gram state of every rank's rows, on every rank: this rank's rows in double, summed over ranks in rank order.</summary>
    /// <param name="comm">The ranks holding the shards.</param>
    /// <param name="keys">This rank's rows, <c>[n_r, d]</c> (may be empty).</param>
    /// <param name="dimension">d, the same on every rank.</param>
    /// <param name="weights">Optional weight per local row (as <see cref="LeverageScores.Gram"/>).</param>
    /// <param name="maxDegreeOfParallelism">Threads for the local sum; the bits do not depend on it.</param>
    /// <returns>The global state (rows counted over every rank).</returns>
    /// <exception cref="DistributedException">Some rank's rows are invalid (d &lt; 1, a length that is not a multiple of d, non-finite values) or its d differs from rank 0's; every rank throws it.</exception>
    public static GramState Gram(Communicator comm, ReadOnlySpan<float> keys, int dimension, ReadOnlySpan<double> weights = default, int maxDegreeOfParallelism = 0)
    {
        ArgumentNullException.ThrowIfNull(comm);
        GramState? local = null;
        Exception? failure = null;
        try
        {
            local = LeverageScores.Gram(keys, dimension, maxDegreeOfParallelism, weights);
        }
        catch (ArgumentException e)
        {
            failure = e;
        }

        ShardInputs.Agree(comm, [dimension], "d", null, failure);
        return Allreduced(comm, local!);
    }

    /// <summary>The leverage scores of this rank's rows against the Gram matrix of every rank's rows, with its numerical rank.</summary>
    /// <param name="comm">The ranks holding the shards.</param>
    /// <param name="keys">This rank's rows, <c>[n_r, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <returns>tau of the local rows (in [0, 1]) and rank K, the same rank on every rank.</returns>
    /// <exception cref="DistributedException">Some rank's rows are invalid; every rank throws it.</exception>
    public static (double[] Scores, int Rank) Compute(Communicator comm, ReadOnlySpan<float> keys, int dimension, int maxDegreeOfParallelism = 0) =>
        SensitivityBounds(comm, keys, dimension, 2, maxDegreeOfParallelism);

    /// <summary>
    /// The sensitivity bounds of this rank's rows for <c>|x|^p</c>, as <see cref="UniversalSet.SensitivityBounds"/> computes them
    /// on the whole key set: leverage scores for p = 2, else l_p Lewis weights by the same Cohen–Peng iteration, whose
    /// weighted Gram matrix is allreduced every step and whose stopping test uses the largest change over every rank (so
    /// all ranks stop at the same step).
    /// </summary>
    /// <param name="comm">The ranks holding the shards.</param>
    /// <param name="keys">This rank's rows, <c>[n_r, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="p">p in (0, 4), the same on every rank.</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <returns>The local rows' bounds and rank K.</returns>
    /// <exception cref="ArgumentOutOfRangeException">p outside (0, 4) (on every rank, when every rank passes the same).</exception>
    /// <exception cref="DistributedException">Some rank's rows are invalid, or its d or p differs from rank 0's; every rank throws it.</exception>
    /// <exception cref="InvalidOperationException">The Lewis iteration did not converge (on every rank alike).</exception>
    public static (double[] Bounds, int Rank) SensitivityBounds(Communicator comm, ReadOnlySpan<float> keys, int dimension, double p = 2, int maxDegreeOfParallelism = 0)
    {
        ArgumentNullException.ThrowIfNull(comm);
        Exception? global = null, local = null;
        if (!(p > 0 && p < 4))
        {
            global = new ArgumentOutOfRangeException(nameof(p), p, "p must lie in (0, 4): the Lewis-weight iteration converges there (Cohen–Peng); p <= 0 is no attention.");
        }

        try
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
            if (keys.Length % dimension != 0)
            {
                throw new ArgumentException($"keys: length {keys.Length} is not a multiple of d = {dimension}.", nameof(keys));
            }

            ShardInputs.Finite(keys, dimension, nameof(keys), "leverage scores need finite keys");
        }
        catch (ArgumentException e)
        {
            local = e;
        }

        ShardInputs.Agree(comm, [dimension, ShardInputs.Bits(p)], "d, p bits", global, local);
        return Bounds(comm, keys, dimension, p, maxDegreeOfParallelism);
    }

    /// <summary>
    /// <see cref="SensitivityBounds"/> for inputs every rank has already checked and agreed on. For p != 2 only the Lewis
    /// iteration's weighted Gram matrices are summed: its first step's weights are all 1, the unweighted matrix itself.
    /// </summary>
    internal static (double[] Bounds, int Rank) Bounds(Communicator comm, ReadOnlySpan<float> keys, int dimension, double p, int maxDegreeOfParallelism)
    {
        if (p == 2)
        {
            GramFactor factor = Allreduced(comm, LeverageScores.Gram(keys, dimension, maxDegreeOfParallelism)).Factor();
            return (LeverageScores.Scores(keys, factor, maxDegreeOfParallelism), factor.Rank);
        }

        (double[] w, int rank) = LewisWeights(comm, keys, dimension, p, maxDegreeOfParallelism);
        double factorP = p > 2 ? Math.Pow(rank, (p / 2) - 1) : 1;
        return ([.. w.Select(x => Math.Min(1, factorP * x))], rank);
    }

    /// <summary>The Lewis-weight iteration of the core's LewisWeights.Compute, with the Gram matrix and the change taken over every rank.</summary>
    private static (double[] Weights, int Rank) LewisWeights(Communicator comm, ReadOnlySpan<float> keys, int d, double p, int maxDegreeOfParallelism)
    {
        int n = keys.Length / d;
        double[] w = new double[n];
        Array.Fill(w, 1.0);
        double[] rowWeights = new double[n];
        for (int iteration = 0; iteration < Leverage.LewisWeights.MaxIterations; iteration++)
        {
            Leverage.LewisWeights.GramWeights(w, p, rowWeights);
            GramFactor factor = Allreduced(comm, LeverageScores.Gram(keys, d, maxDegreeOfParallelism, rowWeights)).Factor();
            double change = Leverage.LewisWeights.Step(keys, factor, p, w, maxDegreeOfParallelism);
            if (comm.AllreduceMax(change) < Leverage.LewisWeights.ConvergenceTolerance)
            {
                return (w, factor.Rank);
            }
        }

        throw new InvalidOperationException($"The Lewis-weight iteration for p = {p} did not converge in {Leverage.LewisWeights.MaxIterations} steps.");
    }

    /// <summary>The state of every rank's rows: matrices summed in rank order, row counts summed.</summary>
    internal static GramState Allreduced(Communicator comm, GramState local)
    {
        double[] matrix = local.Matrix.ToArray();
        long[] rows = [local.Rows];
        comm.AllreduceSum(matrix);
        comm.AllreduceSum(rows);
        return GramState.FromMatrix(local.Dimension, matrix, rows[0]);
    }
}
