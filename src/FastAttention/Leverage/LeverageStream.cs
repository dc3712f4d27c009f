namespace FastAttention.Leverage;

/// <summary>
/// One streaming pass over keys with workspace independent of n (docs/algorithms.md §4): a running Gram matrix and the
/// inverse of <c>G + delta I</c> (Sherman–Morrison per key, rebuilt from G every <see cref="RefreshInterval"/> keys), and
/// the online score <c>k_j^T (G_&lt;=j)^+ k_j</c> of each key as it arrives. Online scores only fall as keys arrive, so
/// they bound the final leverage scores from above: a key whose online score is below eps can never be in the
/// final universal set, and only the candidates (online score &gt;= eps) are kept, with their rows. <see cref="Finish"/>
/// rescores the candidates against the final Gram matrix. Workspace: d^2 doubles plus the candidates, whose
/// number is at most the sum of online scores over eps, O(d log(n kappa) / eps).
/// </summary>
public sealed class LeverageStream
{
    /// <summary>Keys between rebuilds of the inverse from the Gram matrix (bounds the drift of the rank-one updates).</summary>
    public const int RefreshInterval = 4096;

    /// <summary>Relative regularisation delta / (largest squared row norm) of the running inverse.</summary>
    public const double Regularisation = 1e-10;

    private readonly double[] _inverse;
    private readonly double[] _u;
    private readonly double[] _row;
    private readonly List<(long Index, float[] Row, double Online)> _candidates = [];
    private double[] _online = [];
    private int _lastCount;
    private double _delta;
    private int _sinceRefresh;

    /// <summary>A stream of d-dimensional keys keeping candidates for the universal set at <paramref name="eps"/>.</summary>
    /// <param name="dimension">d.</param>
    /// <param name="eps">eps in (0, 1].</param>
    public LeverageStream(int dimension, double eps)
    {
        UniversalSet.CheckEps(eps);
        Eps = eps;
        Gram = new GramState(dimension);
        _inverse = new double[dimension * dimension];
        _u = new double[dimension];
        _row = new double[dimension];
    }

    /// <summary>eps.</summary>
    public double Eps { get; }

    /// <summary>The running Gram state (mergeable with other shards' states).</summary>
    public GramState Gram { get; }

    /// <summary>Keys seen.</summary>
    public long Count { get; private set; }

    /// <summary>Candidates kept so far (online score &gt;= eps).</summary>
    public int CandidateCount => _candidates.Count;

    /// <summary>The online scores of the keys appended by the last call, in order (for inspection and tests).</summary>
    public IReadOnlyList<double> LastOnlineScores => new ArraySegment<double>(_online, 0, _lastCount);

    /// <summary>Appends keys (row-major, a multiple of d) and returns nothing; candidates are kept internally.</summary>
    /// <param name="rows">Keys, <c>[count, d]</c>.</param>
    public void Append(ReadOnlySpan<float> rows)
    {
        int d = Gram.Dimension;
        LeverageScores.Check(rows, d, nameof(rows));
        int count = rows.Length / d;
        if (_online.Length < count)
        {
            _online = new double[count];
        }

        _lastCount = count;
        Span<double> online = _online.AsSpan(0, count);
        for (int j = 0; j < count; j++)
        {
            ReadOnlySpan<float> k = rows.Slice(j * d, d);
            double norm = 0;
            for (int l = 0; l < d; l++)
            {
                _row[l] = k[l];
                norm += _row[l] * _row[l];
            }

            if (norm == 0)
            {
                online[j] = 0; // a zero key scores 0 and changes nothing (the buffer holds the previous call's scores)
                Count++;
                continue;
            }

            if (_delta == 0 || norm * Regularisation > _delta * 16)
            {
                // First key, or keys far larger than the scale delta was set for: reset delta and rebuild.
                _delta = norm * Regularisation;
                Gram.Add(k);
                Rebuild();
                online[j] = 1; // a key in a new direction (or the first) has online score 1
            }
            else
            {
                // u = M k, s = k^T M k; the online score with k itself included is s / (1 + s).
                for (int a = 0; a < d; a++)
                {
                    _u[a] = System.Numerics.Tensors.TensorPrimitives.Dot(_inverse.AsSpan(a * d, d), _row);
                }

                double s = System.Numerics.Tensors.TensorPrimitives.Dot<double>(_row, _u);
                online[j] = s / (1 + s);
                for (int a = 0; a < d; a++)
                {
                    Span<double> line = _inverse.AsSpan(a * d, d);
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(_u, -_u[a] / (1 + s), line, line);
                }

                Gram.Add(k);
                if (++_sinceRefresh >= RefreshInterval)
                {
                    Rebuild();
                }
            }

            if (online[j] >= Eps * (1 - 1e-6))
            {
                _candidates.Add((Count, k.ToArray(), online[j]));
            }

            Count++;
        }
    }

    /// <summary>The universal set at eps: the candidates whose final leverage score reaches eps, sorted, with the certificate.</summary>
    /// <returns>Indices (positions in the stream), their final scores, and the certificate (score sum = rank K).</returns>
    public (long[] Indices, double[] Scores, UniversalSetCertificate Certificate) Finish()
    {
        GramFactor factor = Gram.Factor();
        var kept = new List<(long, double)>();
        foreach ((long index, float[] row, _) in _candidates)
        {
            double score = Math.Clamp(factor.Score(row), 0, 1);
            if (score >= Eps * (1 - 1e-9))
            {
                kept.Add((index, score));
            }
        }

        var certificate = new UniversalSetCertificate(Eps, 2, kept.Count, factor.Rank / Eps, factor.Rank, factor.Rank);
        return ([.. kept.Select(x => x.Item1)], [.. kept.Select(x => x.Item2)], certificate);
    }

    /// <summary>The exact two-pass variant over a re-readable source of key chunks: pass 1 the Gram matrix, pass 2 the scores.</summary>
    /// <param name="chunks">Called once per pass; yields the keys in the same order each time.</param>
    /// <param name="dimension">d.</param>
    /// <param name="eps">eps.</param>
    /// <returns>The universal set (indices sorted), the scores of its members, and the certificate.</returns>
    public static (long[] Indices, double[] Scores, UniversalSetCertificate Certificate) TwoPass(Func<IEnumerable<float[]>> chunks, int dimension, double eps)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        UniversalSet.CheckEps(eps);
        var gram = new GramState(dimension);
        foreach (float[] chunk in chunks())
        {
            gram.Merge(LeverageScores.Gram(chunk, dimension));
        }

        GramFactor factor = gram.Factor();
        var indices = new List<long>();
        var scores = new List<double>();
        long offset = 0;
        foreach (float[] chunk in chunks())
        {
            double[] s = LeverageScores.Scores(chunk, factor);
            for (int j = 0; j < s.Length; j++)
            {
                if (s[j] >= eps * (1 - 1e-9))
                {
                    indices.Add(offset + j);
                    scores.Add(s[j]);
                }
            }

            offset += s.Length;
        }

        return ([.. indices], [.. scores], new UniversalSetCertificate(eps, 2, indices.Count, factor.Rank / eps, factor.Rank, factor.Rank));
    }

    /// <summary>M = (G + delta I)^-1 by Cholesky (G + delta I is positive definite).</summary>
    private void Rebuild()
    {
        int d = Gram.Dimension;
        double[] a = Gram.Matrix.ToArray();
        for (int i = 0; i < d; i++)
        {
            a[(i * d) + i] += _delta;
        }

        // Cholesky a = L L^T in place (lower).
        for (int j = 0; j < d; j++)
        {
            double diagonal = a[(j * d) + j];
            for (int t = 0; t < j; t++)
            {
                diagonal -= a[(j * d) + t] * a[(j * d) + t];
            }

            diagonal = Math.Sqrt(Math.Max(diagonal, _delta));
            a[(j * d) + j] = diagonal;
            for (int i = j + 1; i < d; i++)
            {
                double sum = a[(i * d) + j];
                for (int t = 0; t < j; t++)
                {
                    sum -= a[(i * d) + t] * a[(j * d) + t];
                }

                a[(i * d) + j] = sum / diagonal;
            }
        }

        // M = L^-T L^-1: solve column by column.
        double[] column = new double[d];
        for (int c = 0; c < d; c++)
        {
            Array.Clear(column);
            column[c] = 1;
            for (int i = 0; i < d; i++)
            {
                double sum = column[i];
                for (int t = 0; t < i; t++)
                {
                    sum -= a[(i * d) + t] * column[t];
                }

                column[i] = sum / a[(i * d) + i];
            }

            for (int i = d - 1; i >= 0; i--)
            {
                double sum = column[i];
                for (int t = i + 1; t < d; t++)
                {
                    sum -= a[(t * d) + i] * column[t];
                }

                column[i] = sum / a[(i * d) + i];
            }

            for (int i = 0; i < d; i++)
            {
                _inverse[(i * d) + c] = column[i];
            }
        }

        _sinceRefresh = 0;
    }
}
