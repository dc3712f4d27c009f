using System.Numerics.Tensors;

namespace FastAttention.Leverage;

/// <summary>What a universal set guarantees.</summary>
/// <param name="Eps">eps: every entry <c>A_ij &gt;= eps</c> of <c>|x|^p</c> attention, for every query, has its key j in the set.</param>
/// <param name="P">p of <c>f(x) = |x|^p</c>.</param>
/// <param name="Size">|U|.</param>
/// <param name="SizeBound">The paper's bound on |U|: rank/eps for p &lt;= 2 (sum of the sensitivity bounds is at most the rank), rank^(p/2)/eps for p &gt; 2.</param>
/// <param name="ScoreSum">The sum of the sensitivity bounds (rank K for p = 2).</param>
/// <param name="Rank">The numerical rank of K.</param>
public sealed record UniversalSetCertificate(double Eps, double P, int Size, double SizeBound, double ScoreSum, int Rank);

/// <summary>
/// Universal sets (docs/algorithms.md §4): <c>U = {j : sigma_j &gt;= eps}</c> where <c>sigma_j</c> bounds key j's sensitivity,
/// <c>sup_y |k_j.y|^p / sum_l |k_l.y|^p</c>. For p = 2 that bound is the leverage score; otherwise it comes from the
/// l_p Lewis weights w: <c>sigma_j &lt;= w_j</c> for p &lt;= 2 and <c>&lt;= rank^(p/2 - 1) w_j</c> for p &gt; 2. Since every
/// attention entry <c>A_ij &lt;= sigma_j</c>, U holds every heavy entry of every query, and <c>|U| &lt;= sum sigma / eps</c>
/// whatever n is.
/// </summary>
public static class UniversalSet
{
    /// <summary>The sensitivity upper bounds of the rows of K for <c>|x|^p</c>, with the rank of K.</summary>
    /// <param name="keys">K, <c>[n, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="p">p in (0, 4).</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <returns>sigma bounds, length n, and the rank.</returns>
    public static (double[] Bounds, int Rank) SensitivityBounds(ReadOnlySpan<float> keys, int dimension, double p = 2, int maxDegreeOfParallelism = 0)
    {
        LewisWeights.CheckP(p);
        if (p == 2)
        {
            GramFactor factor = LeverageScores.Gram(keys, dimension, maxDegreeOfParallelism).Factor();
            return (LeverageScores.Scores(keys, factor, maxDegreeOfParallelism), factor.Rank);
        }

        (double[] w, int rank) = LewisWeights.Compute(keys, dimension, p, maxDegreeOfParallelism);
        double factorP = p > 2 ? Math.Pow(rank, (p / 2) - 1) : 1;
        return ([.. w.Select(x => Math.Min(1, factorP * x))], rank);
    }

    /// <summary>The universal set for eps: sorted key indices with their certificate.</summary>
    /// <param name="keys">K, <c>[n, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="eps">eps in (0, 1].</param>
    /// <param name="p">p in (0, 4).</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <returns>The indices and the certificate.</returns>
    public static (int[] Indices, UniversalSetCertificate Certificate) Compute(ReadOnlySpan<float> keys, int dimension, double eps, double p = 2, int maxDegreeOfParallelism = 0)
    {
        CheckEps(eps);
        (double[] bounds, int rank) = SensitivityBounds(keys, dimension, p, maxDegreeOfParallelism);
        return FromBounds(bounds, rank, eps, p);
    }

    /// <summary>The universal set of given sensitivity bounds.</summary>
    /// <param name="bounds">sigma bounds.</param>
    /// <param name="rank">rank K.</param>
    /// <param name="eps">eps in (0, 1].</param>
    /// <param name="p">p.</param>
    /// <returns>The indices and the certificate.</returns>
    public static (int[] Indices, UniversalSetCertificate Certificate) FromBounds(IReadOnlyList<double> bounds, int rank, double eps, double p)
    {
        ArgumentNullException.ThrowIfNull(bounds);
        CheckEps(eps);
        int[] indices = [.. Enumerable.Range(0, bounds.Count).Where(j => bounds[j] >= eps * (1 - 1e-9))];
        double sizeBound = (p > 2 ? Math.Pow(rank, p / 2) : rank) / eps;
        return (indices, new UniversalSetCertificate(eps, p, indices.Length, sizeBound, bounds.Sum(), rank));
    }

    /// <summary>The k keys with the largest bounds (ties by index), sorted by index.</summary>
    /// <param name="bounds">sigma bounds (or leverage scores).</param>
    /// <param name="count">k.</param>
    /// <returns>Sorted indices.</returns>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // once per head: no tier-0 loops
    public static int[] Top(IReadOnlyList<double> bounds, int count)
    {
        ArgumentNullException.ThrowIfNull(bounds);
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        int n = bounds.Count;
        if (count >= n)
        {
            return [.. Enumerable.Range(0, n)];
        }

        // The k-th largest bound by quickselect (O(n) expected), then every key above it and the first keys (by index)
        // equal to it: the same set as ordering by (bound descending, index). CompareTo orders NaN below every number, as
        // the ordering did.
        double[] values = bounds as double[] ?? [.. bounds];
        double kth = Smallest(values, n - count);
        int ties = count;
        foreach (double x in values)
        {
            ties -= x.CompareTo(kth) > 0 ? 1 : 0;
        }

        int[] chosen = new int[count];
        int taken = 0;
        for (int j = 0; j < n && taken < count; j++)
        {
            int order = values[j].CompareTo(kth);
            if (order > 0 || (order == 0 && ties-- > 0))
            {
                chosen[taken++] = j;
            }
        }

        return chosen;
    }

    /// <summary>
    /// The <paramref name="index"/>-th smallest (0-based) of <paramref name="values"/> under <see cref="double.CompareTo(double)"/>:
    /// quickselect on a copy with a median-of-three pivot and a three-way partition (ties), falling back to a sort after
    /// 2 log2 n rounds so the worst case stays O(n log n). Not Array.Sort from the start: this runs once per head, before
    /// tiering has optimised the framework's sort, where it cost several times the selection.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static double Smallest(double[] values, int index)
    {
        double[] a = (double[])values.Clone();
        int lo = 0, hi = a.Length - 1, rounds = 2 * (System.Numerics.BitOperations.Log2((uint)a.Length) + 1);
        while (lo < hi)
        {
            if (rounds-- == 0)
            {
                Array.Sort(a, lo, hi - lo + 1);
                return a[index];
            }

            double pivot = Median(a[lo], a[lo + ((hi - lo) / 2)], a[hi]);
            int lt = lo, i = lo, gt = hi;
            while (i <= gt)
            {
                int order = a[i].CompareTo(pivot);
                if (order < 0)
                {
                    (a[lt], a[i]) = (a[i], a[lt]);
                    lt++;
                    i++;
                }
                else if (order > 0)
                {
                    (a[gt], a[i]) = (a[i], a[gt]);
                    gt--;
                }
                else
                {
                    i++;
                }
            }

            // Now a[lo..lt) < pivot, a[lt..gt] == pivot, a(gt..hi] > pivot.
            if (index < lt)
            {
                hi = lt - 1;
            }
            else if (index > gt)
            {
                lo = gt + 1;
            }
            else
            {
                return pivot;
            }
        }

        return a[index];
    }

    private static double Median(double x, double y, double z)
    {
        if (x.CompareTo(y) > 0)
        {
            (x, y) = (y, x);
        }

        if (y.CompareTo(z) > 0)
        {
            y = z;
        }

        return x.CompareTo(y) > 0 ? x : y;
    }

    /// <summary>
    /// Brute force: every (query, key) entry <c>A_ij &gt;= eps</c> of <c>|x|^p</c> attention (O(nq nk d)) and whether its key is in
    /// <paramref name="set"/>. The checker the certificate is tested with.
    /// </summary>
    /// <param name="queries">Q, <c>[nq, d]</c>.</param>
    /// <param name="keys">K, <c>[nk, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="p">p.</param>
    /// <param name="eps">eps.</param>
    /// <param name="set">Sorted key indices.</param>
    /// <returns>The heavy entries found, and those whose key is missing from the set.</returns>
    public static (int Heavy, List<(int Query, int Key, double Weight)> Missing) Check(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, int dimension, double p, double eps, IReadOnlyCollection<int> set)
    {
        ArgumentNullException.ThrowIfNull(set);
        LeverageScores.Check(queries, dimension, nameof(queries));
        LeverageScores.Check(keys, dimension, nameof(keys));
        var members = new HashSet<int>(set);
        int nq = queries.Length / dimension, nk = keys.Length / dimension;
        double[] f = new double[nk];
        int heavy = 0;
        var missing = new List<(int, int, double)>();
        for (int i = 0; i < nq; i++)
        {
            ReadOnlySpan<float> q = queries.Slice(i * dimension, dimension);
            double total = 0;
            for (int j = 0; j < nk; j++)
            {
                double dot = 0;
                for (int l = 0; l < dimension; l++)
                {
                    dot += (double)q[l] * keys[(j * dimension) + l];
                }

                f[j] = Math.Pow(Math.Abs(dot), p);
                total += f[j];
            }

            for (int j = 0; j < nk && total > 0; j++)
            {
                double a = f[j] / total;
                if (a >= eps)
                {
                    heavy++;
                    if (!members.Contains(j))
                    {
                        missing.Add((i, j, a));
                    }
                }
            }
        }

        return (heavy, missing);
    }

    /// <summary>
    /// The heavy entries of p = 2 attention found by scanning only U: <c>A_ij = (q_i.k_j)^2 / q_i^T G q_i</c> with the Gram
    /// matrix G giving the exact denominator in O(d^2), so the whole scan is O(nq (|U| d + d^2)) instead of O(nq nk d).
    /// </summary>
    /// <param name="queries">Q, <c>[nq, d]</c>.</param>
    /// <param name="keys">K, <c>[nk, d]</c>.</param>
    /// <param name="gram">K's Gram state.</param>
    /// <param name="set">U.</param>
    /// <param name="eps">eps.</param>
    /// <returns>(query, key, A_ij) for every entry of at least eps.</returns>
    public static List<(int Query, int Key, double Weight)> HeavyEntries(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, GramState gram, IReadOnlyList<int> set, double eps)
    {
        ArgumentNullException.ThrowIfNull(gram);
        ArgumentNullException.ThrowIfNull(set);
        int d = gram.Dimension, nq = queries.Length / d;
        LeverageScores.Check(queries, d, nameof(queries));
        LeverageScores.Check(keys, d, nameof(keys));
        int nk = keys.Length / d;
        if (set.Any(j => j < 0 || j >= nk))
        {
            throw new ArgumentException($"The set holds an index outside the {nk} keys.", nameof(set));
        }
        ReadOnlySpan<double> g = gram.Matrix;
        var found = new List<(int, int, double)>();
        double[] q = new double[d], gq = new double[d];
        for (int i = 0; i < nq; i++)
        {
            for (int l = 0; l < d; l++)
            {
                q[l] = queries[(i * d) + l];
            }

            for (int a = 0; a < d; a++)
            {
                gq[a] = TensorPrimitives.Dot(g.Slice(a * d, d), q);
            }

            double total = TensorPrimitives.Dot<double>(q, gq);
            if (total <= 0)
            {
                continue;
            }

            foreach (int j in set)
            {
                double dot = 0;
                for (int l = 0; l < d; l++)
                {
                    dot += q[l] * keys[(j * d) + l];
                }

                double a = dot * dot / total;
                if (a >= eps)
                {
                    found.Add((i, j, a));
                }
            }
        }

        return found;
    }

    internal static void CheckEps(double eps)
    {
        if (!(eps > 0 && eps <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must lie in (0, 1]: it is the attention weight a heavy entry reaches.");
        }
    }
}

/// <summary>
/// l_p Lewis weights of the rows of K: the fixed point <c>w_j = (k_j^T (K^T W^(1 - 2/p) K)^+ k_j)^(p/2)</c>, found by
/// Cohen–Peng iteration, which converges for p in (0, 4); they sum to rank K (p = 2 gives the leverage scores). Beyond
/// p = 4 the plain iteration can oscillate, so such p are refused.
/// </summary>
public static class LewisWeights
{
    /// <summary>Iterations at most.</summary>
    public const int MaxIterations = 5000;

    /// <summary>
    /// Computes the Lewis weights (iterated until the largest relative change is below 1e-10; the iteration contracts by
    /// about |1 - p/2| per step, so p near 4 or near 0 takes longer) and the rank.
    /// </summary>
    /// <param name="keys">K, <c>[n, d]</c>.</param>
    /// <param name="dimension">d.</param>
    /// <param name="p">p in (0, 4).</param>
    /// <param name="maxDegreeOfParallelism">Threads.</param>
    /// <returns>w and rank K.</returns>
    public static (double[] Weights, int Rank) Compute(ReadOnlySpan<float> keys, int dimension, double p, int maxDegreeOfParallelism = 0)
    {
        CheckP(p);
        LeverageScores.Check(keys, dimension, nameof(keys));
        int n = keys.Length / dimension;
        double[] w = new double[n];
        Array.Fill(w, 1.0);
        double[] rowWeights = new double[n];
        for (int iteration = 0; iteration < MaxIterations; iteration++)
        {
            GramWeights(w, p, rowWeights);
            GramFactor factor = LeverageScores.Gram(keys, dimension, maxDegreeOfParallelism, rowWeights).Factor();
            double change = Step(keys, factor, p, w, maxDegreeOfParallelism);
            if (p == 2 || change < ConvergenceTolerance)
            {
                return (w, factor.Rank);
            }
        }

        throw new InvalidOperationException($"The Lewis-weight iteration for p = {p} did not converge in {MaxIterations} steps.");
    }

    /// <summary>The largest relative change of a step below which <see cref="Compute"/> stops.</summary>
    public const double ConvergenceTolerance = 1e-10;

    /// <summary>
    /// The row weights <c>w_j^(1 - 2/p)</c> of the Gram matrix the next step scores against (0 for a zero weight, so such a
    /// row stays out): with <see cref="Step"/>, the iteration of <see cref="Compute"/> in pieces, for rows held in shards
    /// whose weighted Gram matrices are summed between the two (<see cref="GramState.Merge"/> or an allreduce).
    /// </summary>
    /// <param name="weights">The current Lewis weights w of some rows (1 to start).</param>
    /// <param name="p">p in (0, 4).</param>
    /// <param name="rowWeights">Out: one Gram weight per row.</param>
    /// <exception cref="ArgumentException">p outside (0, 4), or the lengths differ.</exception>
    public static void GramWeights(ReadOnlySpan<double> weights, double p, Span<double> rowWeights)
    {
        CheckP(p);
        Validate.Length(rowWeights.Length, weights.Length, nameof(rowWeights), "[n]", $"{weights.Length} weights");
        for (int j = 0; j < weights.Length; j++)
        {
            rowWeights[j] = weights[j] > 0 ? Math.Pow(weights[j], 1 - (2 / p)) : 0;
        }
    }

    /// <summary>
    /// One Cohen–Peng step for some rows: <c>w_j = (k_j^T G^+ k_j)^(p/2)</c> against the factor of the weighted Gram matrix
    /// G of all rows (weighted by <see cref="GramWeights"/>), in place; returns the largest relative change over these rows.
    /// </summary>
    /// <param name="keys">The rows, <c>[n, d]</c>.</param>
    /// <param name="factor">The factor of the weighted Gram matrix of every row.</param>
    /// <param name="p">p in (0, 4).</param>
    /// <param name="weights">These rows' weights in, the next weights out.</param>
    /// <param name="maxDegreeOfParallelism">Threads; the bits do not depend on it.</param>
    /// <returns>max_j |w_j' - w_j| / w_j' (0 for no rows).</returns>
    /// <exception cref="ArgumentException">p outside (0, 4), or a length does not match.</exception>
    public static double Step(ReadOnlySpan<float> keys, GramFactor factor, double p, Span<double> weights, int maxDegreeOfParallelism = 0)
    {
        ArgumentNullException.ThrowIfNull(factor);
        CheckP(p);
        int d = factor.Dimension;
        Validate.Length(keys.Length, (long)weights.Length * d, nameof(keys), "[n, d]", $"{weights.Length} weights, d {d}");

        // Unclamped: a heavily down-weighted row can score above 1 against the weighted Gram matrix.
        double[] s = LeverageScores.Scores(keys, factor, maxDegreeOfParallelism, clamp: false);
        double change = 0;
        for (int j = 0; j < weights.Length; j++)
        {
            double next = Math.Pow(Math.Max(s[j], 0), p / 2);
            change = Math.Max(change, Math.Abs(next - weights[j]) / Math.Max(next, 1e-300));
            weights[j] = next;
        }

        return change;
    }

    internal static void CheckP(double p)
    {
        if (!(p > 0 && p < 4))
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "p must lie in (0, 4): the Lewis-weight iteration converges there (Cohen–Peng); p <= 0 is no attention.");
        }
    }
}
