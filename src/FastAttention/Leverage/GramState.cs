using System.Numerics.Tensors;

namespace FastAttention.Leverage;

/// <summary>
/// The running Gram matrix <c>G = sum_j w_j k_j k_j^T</c> (d x d, double) of the keys seen so far: the whole state
/// leverage scores need, independent of n. States of disjoint shards merge by addition (<see cref="Merge"/>), so
/// shards computed on different threads or machines combine; merging in a fixed order gives the same bits.
/// </summary>
public sealed class GramState
{
    private readonly double[] _gram;

    /// <summary>An empty state for rows of length <paramref name="dimension"/>.</summary>
    /// <param name="dimension">d.</param>
    public GramState(int dimension)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
        Dimension = dimension;
        _gram = new double[dimension * dimension];
    }

    private GramState(int dimension, double[] gram, long rows)
    {
        Dimension = dimension;
        _gram = gram;
        Rows = rows;
    }

    /// <summary>d.</summary>
    public int Dimension { get; }

    /// <summary>Rows added so far.</summary>
    public long Rows { get; private set; }

    /// <summary>G, row-major d x d.</summary>
    public ReadOnlySpan<double> Matrix => _gram;

    /// <summary>Adds rows (row-major, length a multiple of d) in double, exactly in their order.</summary>
    /// <param name="rows">Keys, <c>[count, d]</c>.</param>
    /// <param name="weights">Optional per-row weights w_j (null: 1); rows with weight 0 are skipped.</param>
    public void Add(ReadOnlySpan<float> rows, ReadOnlySpan<double> weights = default)
    {
        int d = Dimension;
        if (rows.Length % d != 0)
        {
            throw new ArgumentException($"The rows' length {rows.Length} is not a multiple of d = {d}.", nameof(rows));
        }

        int count = rows.Length / d;
        if (!weights.IsEmpty && weights.Length != count)
        {
            throw new ArgumentException($"{weights.Length} weights for {count} rows.", nameof(weights));
        }

        Span<double> buffer = d <= 512 ? stackalloc double[d] : new double[d]; // no allocation per call: streaming adds one key at a time
        for (int j = 0; j < count; j++)
        {
            double w = weights.IsEmpty ? 1 : weights[j];
            if (w == 0)
            {
                continue;
            }

            ReadOnlySpan<float> k = rows.Slice(j * d, d);
            for (int l = 0; l < d; l++)
            {
                buffer[l] = k[l];
            }

            // Upper triangle, one vectorised axpy per row of G; mirrored on read.
            for (int a = 0; a < d; a++)
            {
                double scale = w * buffer[a];
                if (scale != 0)
                {
                    Span<double> target = _gram.AsSpan((a * d) + a, d - a);
                    TensorPrimitives.MultiplyAdd(buffer.Slice(a, d - a), scale, target, target);
                }
            }
        }

        Rows += count;
        Mirror();
    }

    /// <summary>
    /// Adds rows by the project's float32 GEMM (<c>G += K^T K</c> per chunk of 16,384 rows, chunks summed in double):
    /// the fast path for very large n. Each chunk's entries carry float rounding (relative ~1e-6 of sum |k_a k_b|).
    /// </summary>
    /// <param name="rows">Keys, <c>[count, d]</c>.</param>
    /// <param name="maxDegreeOfParallelism">Threads over chunks; the result bits do not depend on it.</param>
    public unsafe void AddFast(ReadOnlySpan<float> rows, int maxDegreeOfParallelism = 0)
    {
        int d = Dimension;
        if (rows.Length % d != 0)
        {
            throw new ArgumentException($"The rows' length {rows.Length} is not a multiple of d = {d}.", nameof(rows));
        }

        const int Chunk = 16384;
        long count = rows.Length / d;
        int chunks = (int)((count + Chunk - 1) / Chunk);
        int threads = maxDegreeOfParallelism > 0 ? maxDegreeOfParallelism : Environment.ProcessorCount;
        int wave = Math.Max(1, threads * 4);
        float[] partial = new float[(long)Math.Min(wave, chunks) * d * d];
        fixed (float* source = rows)
        {
            nint pointer = (nint)source;
            for (int c0 = 0; c0 < chunks; c0 += wave)
            {
                int items = Math.Min(wave, chunks - c0);
                Parallel.For(0, items, new ParallelOptions { MaxDegreeOfParallelism = threads }, item =>
                {
                    long first = (long)(c0 + item) * Chunk;
                    int m = (int)Math.Min(Chunk, count - first);
                    float* chunk = (float*)pointer + (first * d);
                    fixed (float* target = &partial[(long)item * d * d])
                    {
                        Gemm.Multiply(d, d, m, chunk, true, chunk, false, target, 0f, 1);
                    }
                });

                for (int item = 0; item < items; item++)
                {
                    for (int i = 0; i < d * d; i++)
                    {
                        _gram[i] += partial[((long)item * d * d) + i];
                    }
                }
            }
        }

        Rows += count;
    }

    /// <summary>
    /// Adds another state's Gram matrix (a disjoint shard of rows): the merged state is the state of both shards' rows,
    /// so the leverage scores from its <see cref="Factor"/> are those of the whole key stream (up to the rounding of the
    /// order of the additions; merging in a fixed order gives the same bits).
    /// </summary>
    /// <param name="other">The shard's state.</param>
    /// <exception cref="ArgumentException">The states differ in dimension.</exception>
    public void Merge(GramState other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Dimension != Dimension)
        {
            Validate.Fail(nameof(other), "the states differ in dimension", $"d = {other.Dimension}", $"d = {Dimension}", "only states of keys of the same dimension merge");
        }

        TensorPrimitives.Add(_gram, other._gram, _gram);
        Rows += other.Rows;
    }

    /// <summary>
    /// The state of a Gram matrix summed elsewhere (another process's shards added by an allreduce, a saved state): a copy of
    /// <paramref name="matrix"/>, so its <see cref="Factor"/> scores rows against the whole key set the matrix came from.
    /// </summary>
    /// <param name="dimension">d.</param>
    /// <param name="matrix">G, row-major d x d, symmetric and finite (as <see cref="Matrix"/> returns it).</param>
    /// <param name="rows">The number of rows G sums over, at least 0.</param>
    /// <returns>A new state holding a copy of the matrix.</returns>
    /// <exception cref="ArgumentException">d &lt; 1, the length is not d x d, an entry is not finite, the matrix is not symmetric, or rows is negative.</exception>
    public static GramState FromMatrix(int dimension, ReadOnlySpan<double> matrix, long rows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        Validate.Length(matrix.Length, (long)dimension * dimension, nameof(matrix), "[d, d]", $"d {dimension}");
        for (int a = 0; a < dimension; a++)
        {
            for (int b = 0; b < dimension; b++)
            {
                double x = matrix[(a * dimension) + b];
                if (!double.IsFinite(x) || x != matrix[(b * dimension) + a])
                {
                    Validate.Fail(nameof(matrix), double.IsFinite(x) ? "the matrix is not symmetric" : "an entry is not finite", $"G[{a}, {b}] = {x}, G[{b}, {a}] = {matrix[(b * dimension) + a]}", "a finite symmetric matrix", "pass a Gram matrix as GramState.Matrix returns it");
                }
            }
        }

        return new GramState(dimension, matrix.ToArray(), rows);
    }

    /// <summary>The state of a Gram matrix computed elsewhere (row-major d x d, symmetric; taken, not copied).</summary>
    internal static GramState Of(int dimension, double[] gram, long rows) => new(dimension, gram, rows);

    /// <summary>A copy.</summary>
    /// <returns>An independent state with the same matrix.</returns>
    public GramState Clone()
    {
        var copy = new GramState(Dimension) { Rows = Rows };
        _gram.CopyTo(copy._gram, 0);
        return copy;
    }

    /// <summary>The pseudo-inverse factor of G (see <see cref="GramFactor"/>).</summary>
    /// <param name="relativeTolerance">Pivots below this times the largest diagonal entry count as zero (rank deficiency).</param>
    /// <returns>The factor.</returns>
    public GramFactor Factor(double relativeTolerance = 1e-11) => GramFactor.Of(_gram, Dimension, relativeTolerance);

    private void Mirror()
    {
        int d = Dimension;
        for (int a = 0; a < d; a++)
        {
            for (int b = 0; b < a; b++)
            {
                _gram[(a * d) + b] = _gram[(b * d) + a];
            }
        }
    }
}

/// <summary>
/// Pivoted Cholesky <c>P^T G P = L L^T</c> of a Gram matrix, stopped at numerical rank r (pivots below a relative
/// tolerance count as zero), giving pseudo-inverse semantics: for any k in the column space of K,
/// <c>k^T G^+ k = ||W^T k||^2</c> with <c>W = P[:, :r] L11^-T</c> (d x r). Scores of rows of K then lie in [0, 1]
/// and sum to r = rank K with duplicate or zero columns. The Gram matrix squares the condition number: with the default
/// tolerance 1e-11 on G's pivots, directions of K whose singular value is below about 3e-6 of the largest count as null
/// (so very ill-conditioned K loses its weakest directions rather than returning scores above 1 or NaN).
/// </summary>
public sealed class GramFactor
{
    private GramFactor(int dimension, int rank, double[] whitening)
    {
        Dimension = dimension;
        Rank = rank;
        Whitening = whitening;
    }

    /// <summary>d.</summary>
    public int Dimension { get; }

    /// <summary>r, the numerical rank of G.</summary>
    public int Rank { get; }

    /// <summary>W, row-major d x r: <c>k^T G^+ k = ||k W||^2</c>.</summary>
    public double[] Whitening { get; }

    /// <summary>k^T G^+ k for one row, in double.</summary>
    /// <param name="row">k, length d.</param>
    /// <returns>The score.</returns>
    public double Score(ReadOnlySpan<float> row)
    {
        double total = 0;
        for (int c = 0; c < Rank; c++)
        {
            double y = 0;
            for (int l = 0; l < Dimension; l++)
            {
                y += row[l] * Whitening[(l * Rank) + c];
            }

            total += y * y;
        }

        return total;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // once per head (and per Lewis iteration)
    internal static GramFactor Of(ReadOnlySpan<double> gram, int d, double relativeTolerance)
    {
        double[] a = gram.ToArray();
        int[] perm = [.. Enumerable.Range(0, d)];
        double maxDiagonal = 0;
        for (int i = 0; i < d; i++)
        {
            maxDiagonal = Math.Max(maxDiagonal, a[(i * d) + i]);
        }

        double tolerance = relativeTolerance * maxDiagonal;
        int rank = 0;

        // Right-looking pivoted Cholesky on the (permuted) full matrix; column k of L lands in column k of a.
        for (int k = 0; k < d; k++)
        {
            int pivot = k;
            for (int i = k + 1; i < d; i++)
            {
                if (a[(i * d) + i] > a[(pivot * d) + pivot])
                {
                    pivot = i;
                }
            }

            if (!(a[(pivot * d) + pivot] > tolerance))
            {
                break;
            }

            Swap(a, d, k, pivot);
            (perm[k], perm[pivot]) = (perm[pivot], perm[k]);
            double diagonal = Math.Sqrt(a[(k * d) + k]);
            a[(k * d) + k] = diagonal;
            for (int i = k + 1; i < d; i++)
            {
                a[(i * d) + k] /= diagonal;
            }

            // The whole trailing block is updated (not just its lower half), so later symmetric swaps stay valid.
            for (int j = k + 1; j < d; j++)
            {
                double ljk = a[(j * d) + k];
                for (int i = k + 1; i < d; i++)
                {
                    a[(i * d) + j] -= a[(i * d) + k] * ljk;
                }
            }

            rank++;
        }

        // W = P[:, :r] L11^-T: solve L11 X = I (forward substitution), W[perm[i], c] = X[c, i].
        double[] inverse = new double[rank * rank];
        for (int c = 0; c < rank; c++)
        {
            for (int i = 0; i < rank; i++)
            {
                double sum = i == c ? 1 : 0;
                for (int t = 0; t < i; t++)
                {
                    sum -= a[(i * d) + t] * inverse[(t * rank) + c];
                }

                inverse[(i * rank) + c] = sum / a[(i * d) + i];
            }
        }

        double[] whitening = new double[d * Math.Max(rank, 1)];
        for (int i = 0; i < rank; i++)
        {
            for (int c = 0; c < rank; c++)
            {
                whitening[(perm[i] * rank) + c] = inverse[(c * rank) + i];
            }
        }

        return new GramFactor(d, rank, rank == 0 ? [] : whitening);
    }

    /// <summary>Symmetric swap of rows and columns i and j of a full symmetric matrix (lower part holds L so far).</summary>
    private static void Swap(double[] a, int d, int i, int j)
    {
        if (i == j)
        {
            return;
        }

        for (int c = 0; c < d; c++)
        {
            (a[(i * d) + c], a[(j * d) + c]) = (a[(j * d) + c], a[(i * d) + c]);
        }

        for (int r = 0; r < d; r++)
        {
            (a[(r * d) + i], a[(r * d) + j]) = (a[(r * d) + j], a[(r * d) + i]);
        }
    }
}
