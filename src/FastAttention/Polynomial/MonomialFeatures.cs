namespace FastAttention.Polynomial;

/// <summary>
/// The monomials q^alpha, alpha in N^d with |alpha| &lt;= g, in graded order (docs/algorithms.md §2, step 2).
/// Each monomial of degree t is its parent of degree t - 1 times one coordinate l at least the
/// parent's last coordinate (nondecreasing index sequences, so every alpha appears once), which makes
/// a whole feature row O(r) multiplications. Alongside, the multinomial coefficient |alpha|! / alpha!
/// is carried incrementally: appending l multiplies it by |alpha + e_l| / (alpha_l + 1).
/// </summary>
internal sealed class MonomialFeatures
{
    private readonly int[] _parent;
    private readonly int[] _coordinate;

    public MonomialFeatures(int dimension, int degree, long maxRank)
    {
        long rank = Rank(dimension, degree);
        if (rank > maxRank)
        {
            throw new ArgumentOutOfRangeException(nameof(degree), degree,
                $"The polynomial method needs r = C(d + g, g) = C({dimension} + {degree}, {degree}) = {rank} features, over the budget of {maxRank}; " +
                "use exact attention (or a sketch) for this d and degree.");
        }

        int r = (int)rank;
        Dimension = dimension;
        Degree = degree;
        _parent = new int[r];
        _coordinate = new int[r];
        TotalDegree = new int[r];
        Multinomial = new double[r];
        int[] lastRun = new int[r]; // multiplicity of the last coordinate in the monomial
        _parent[0] = -1;
        _coordinate[0] = -1;
        Multinomial[0] = 1;
        int count = 1, levelStart = 0, levelEnd = 1;
        for (int t = 1; t <= degree; t++)
        {
            for (int p = levelStart; p < levelEnd; p++)
            {
                int last = _coordinate[p];
                for (int l = Math.Max(last, 0); l < dimension; l++)
                {
                    int multiplicity = l == last ? lastRun[p] : 0;
                    _parent[count] = p;
                    _coordinate[count] = l;
                    TotalDegree[count] = t;
                    lastRun[count] = multiplicity + 1;
                    Multinomial[count] = Multinomial[p] * t / (multiplicity + 1);
                    count++;
                }
            }

            levelStart = levelEnd;
            levelEnd = count;
        }

        Count = count;
    }

    public int Dimension { get; }

    public int Degree { get; }

    /// <summary>For each monomial, the index of its parent (one degree lower); -1 for the constant.</summary>
    public ReadOnlySpan<int> Parent => _parent;

    /// <summary>For each monomial, the coordinate its parent is multiplied by; -1 for the constant.</summary>
    public ReadOnlySpan<int> Coordinate => _coordinate;

    /// <summary>r, the number of monomials.</summary>
    public int Count { get; }

    /// <summary>|alpha| of each monomial.</summary>
    public int[] TotalDegree { get; }

    /// <summary>|alpha|! / alpha! of each monomial.</summary>
    public double[] Multinomial { get; }

    /// <summary>C(d + g, g), computed without overflow (saturates at long.MaxValue).</summary>
    public static long Rank(int dimension, int degree)
    {
        double value = 1;
        for (int i = 1; i <= degree; i++)
        {
            value = value * (dimension + i) / i;
            if (value > long.MaxValue / 2.0)
            {
                return long.MaxValue;
            }
        }

        return (long)Math.Round(value);
    }

    /// <summary>feature[a] = weight[a] * x^alpha_a for one row x of length d.</summary>
    public void Evaluate(ReadOnlySpan<float> x, ReadOnlySpan<double> weight, Span<double> feature)
    {
        feature[0] = 1;
        for (int a = 1; a < Count; a++)
        {
            feature[a] = feature[_parent[a]] * x[_coordinate[a]];
        }

        System.Numerics.Tensors.TensorPrimitives.Multiply(feature[..Count], weight[..Count], feature[..Count]);
    }
}
