namespace FastAttention.Training;

/// <summary>Which matching task a <see cref="MatchTask"/> asks for.</summary>
public enum MatchKind
{
    /// <summary><c>y_i = 1</c> iff some <c>j1, j2</c> have <c>x_i + x_j1 + x_j2 = 0 (mod M)</c> (Sanford, Hsu and Telgarsky 2023).</summary>
    Match3,

    /// <summary>The pairwise control: <c>y_i = 1</c> iff some <c>j</c> has <c>x_i + x_j = 0 (mod M)</c>.</summary>
    Match2,
}

/// <summary>
/// A Match3 or Match2 task on sequences <c>x in [0, M)^N</c>, one label per position.
/// Convention: the witnesses <c>j1, j2</c> (or <c>j</c>) range over every position the query may see, <b>including</b>
/// <c>i</c> itself and with <c>j1 = j2</c> allowed: <c>x_i + 2 x_j = 0</c> or <c>3 x_i = 0</c> make <c>i</c> positive. That is exactly
/// the set of pairs one head of full tensor attention looks at. Non-causal: every position; causal: positions <c>j &lt;= i</c>.
/// </summary>
/// <param name="Kind">Match3 or Match2.</param>
/// <param name="Length">N, the sequence length.</param>
/// <param name="Modulus">M, the value range; at least <see cref="MinimumModulus"/> so that negatives can always be drawn.</param>
/// <param name="Causal">Label position <c>i</c> from the prefix <c>j &lt;= i</c> only.</param>
/// <param name="Span">Causal only: planted witnesses lie within this many positions before <c>i</c> (<c>i - Span &lt; j &lt; i</c>), so windows
/// <c>(w1, w2)</c> of at least the span see one; the label still counts every witness in the prefix. Null: anywhere in the prefix.</param>
/// <param name="Span2">Causal Match3 only: the second planted witness lies within this many positions before <c>i</c> (null: <see cref="Span"/>),
/// for windows <c>(w1, w2)</c> with <c>w2 &lt; w1</c>.</param>
public sealed record MatchTask(MatchKind Kind, int Length, int Modulus, bool Causal = false, int? Span = null, int? Span2 = null)
{
    /// <summary>The longest sequence a task may have.</summary>
    public const int MaxLength = 2048;

    /// <summary>The largest modulus a task may have (2^24).</summary>
    public const int MaxModulus = 1 << 24;

    /// <summary>The smallest modulus at which the generator can always draw a negative: more than the values a full sequence can forbid.</summary>
    /// <param name="kind">The task.</param>
    /// <param name="length">The sequence length.</param>
    /// <returns>The least valid <c>M</c>.</returns>
    public static int MinimumModulus(MatchKind kind, int length)
    {
        long m = Math.Max(0, length - 1);
        // Match3: v + a + b (m(m+1)/2 pair sums), 2v + a (at most 2 roots for each of m values), 3v (at most 3 roots);
        // Match2: v + a (m values), 2v (at most 2 roots).
        long forbidden = kind == MatchKind.Match3 ? (m * (m + 1) / 2) + (2 * m) + 3 : m + 2;
        return (int)Math.Min(int.MaxValue, forbidden + 1);
    }

    /// <summary>The modulus the tools use when none is given: the smallest prime at least <c>2 N^2</c> (and at least <see cref="MinimumModulus"/>).</summary>
    /// <param name="kind">The task.</param>
    /// <param name="length">The sequence length.</param>
    /// <returns>The default <c>M</c>.</returns>
    public static int DefaultModulus(MatchKind kind, int length)
    {
        long start = Math.Max(Math.Max(2L * length * length, MinimumModulus(kind, length)), 5);
        for (long p = start; p < int.MaxValue; p++)
        {
            if (IsPrime(p))
            {
                return (int)p;
            }
        }

        throw new ArgumentOutOfRangeException(nameof(length), length, "the sequence is too long for an int modulus.");
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the field that cannot make a task.</summary>
    public void Validate()
    {
        if (Length < 1 || Length > MaxLength)
        {
            throw new ArgumentException($"sequence length N = {Length} must be in 1..{MaxLength}.", nameof(Length));
        }

        if (Modulus > MaxModulus)
        {
            throw new ArgumentException($"modulus M = {Modulus} is larger than {MaxModulus:N0} (the generator keeps tables of M entries per sequence).", nameof(Modulus));
        }

        int minimum = MinimumModulus(Kind, Length);
        if (Modulus < minimum)
        {
            throw new ArgumentException($"modulus M = {Modulus} is too small for {Kind} at N = {Length}: negatives need M >= {minimum} (the default is {DefaultModulus(Kind, Length)}).", nameof(Modulus));
        }

        if (Span is { } span && (!Causal || span < 1))
        {
            throw new ArgumentException(Causal ? $"span {span} must be at least 1." : "a span applies to the causal task only.", nameof(Span));
        }

        if (Span2 is { } span2 && (Span is null || span2 < 1 || Kind != MatchKind.Match3))
        {
            throw new ArgumentException($"the second span {span2} needs a span, causal Match3, and must be at least 1.", nameof(Span2));
        }
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Kind}(N={Length}, M={Modulus}{(Causal ? ", causal" : "")}{(Span is { } s ? $", span={s}" : "")}{(Span2 is { } s2 ? $"/{s2}" : "")})";

    private static bool IsPrime(long p)
    {
        if (p < 2)
        {
            return false;
        }

        for (long f = 2; f * f <= p; f++)
        {
            if (p % f == 0)
            {
                return false;
            }
        }

        return true;
    }
}

/// <summary>
/// Seeded Match3 / Match2 sequences with labels balanced by construction, and the labellers that check them.
/// Non-causal: about half the positions are planted positives (disjoint triples <c>a, b, -(a+b)</c>, or pairs <c>a, -a</c>, at random
/// positions, written first), and every other position takes a value that completes no zero-sum triple (pair) with the values already
/// written, so it stays negative. Causal: positions are written left to right, each positive with probability 1/2 (its value
/// completes two earlier values inside the span) or else negative against its whole prefix. The labels returned are always the
/// labeller's, so they are exact whatever the construction does.
/// </summary>
public static class MatchData
{
    /// <summary>Draws sequence <paramref name="index"/> of the stream <paramref name="seed"/>: the same (task, seed, index) gives the same sequence.</summary>
    /// <param name="task">The task.</param>
    /// <param name="seed">The stream.</param>
    /// <param name="index">The sequence's index in the stream.</param>
    /// <param name="values">Receives the N values.</param>
    public static void Sample(MatchTask task, long seed, long index, Span<int> values)
    {
        ArgumentNullException.ThrowIfNull(task);
        task.Validate();
        if (values.Length != task.Length)
        {
            throw new ArgumentException($"values has {values.Length} entries, the task's N is {task.Length}.", nameof(values));
        }

        var random = new SplitMix(unchecked(((ulong)seed * 0x9E3779B97F4A7C15UL) ^ ((ulong)index * 0xD1B54A32D192ED03UL) ^ 0x5851F42D4C957F2DUL));
        var state = new Forbidden(task.Kind, task.Modulus);
        if (task.Causal)
        {
            SampleCausal(task, ref random, state, values);
        }
        else
        {
            SampleFull(task, ref random, state, values);
        }
    }

    /// <summary>Draws <paramref name="count"/> sequences starting at stream index <paramref name="first"/>, with their labels.</summary>
    /// <param name="task">The task.</param>
    /// <param name="seed">The stream.</param>
    /// <param name="first">The first sequence's index in the stream.</param>
    /// <param name="count">How many sequences.</param>
    /// <returns>Values and labels, row-major <c>[count, N]</c>.</returns>
    public static (int[] Values, bool[] Labels) Batch(MatchTask task, long seed, long first, int count)
    {
        ArgumentNullException.ThrowIfNull(task);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        task.Validate();
        int n = task.Length;
        var values = new int[count * n];
        var labels = new bool[count * n];
        var present = new bool[task.Modulus];
        for (int s = 0; s < count; s++)
        {
            Sample(task, seed, first + s, values.AsSpan(s * n, n));
            Label(task, values.AsSpan(s * n, n), labels.AsSpan(s * n, n), present);
        }

        return (values, labels);
    }

    /// <summary>The exact labels in <c>O(N^2 + M)</c>: the set of pair sums (prefix pair sums when causal) looked up at <c>-x_i</c>.</summary>
    /// <param name="task">The task.</param>
    /// <param name="values">The N values, each in <c>[0, M)</c>.</param>
    /// <param name="labels">Receives the N labels.</param>
    /// <param name="scratch">M booleans of workspace (null: allocated).</param>
    public static void Label(MatchTask task, ReadOnlySpan<int> values, Span<bool> labels, bool[]? scratch = null)
    {
        ArgumentNullException.ThrowIfNull(task);
        int n = values.Length, m = task.Modulus;
        if (labels.Length != n)
        {
            throw new ArgumentException($"labels has {labels.Length} entries for {n} values.", nameof(labels));
        }

        CheckValues(values, m);
        var present = scratch ?? new bool[m];
        Array.Clear(present);
        bool three = task.Kind == MatchKind.Match3;
        if (!task.Causal)
        {
            for (int a = 0; a < n; a++)
            {
                if (three)
                {
                    for (int b = a; b < n; b++)
                    {
                        present[(int)(((long)values[a] + values[b]) % m)] = true;
                    }
                }
                else
                {
                    present[values[a]] = true;
                }
            }
        }

        for (int i = 0; i < n; i++)
        {
            if (task.Causal)
            {
                // Add the pairs (or values) that include i: the prefix j <= i is then complete.
                if (three)
                {
                    for (int j = 0; j <= i; j++)
                    {
                        present[(int)(((long)values[i] + values[j]) % m)] = true;
                    }
                }
                else
                {
                    present[values[i]] = true;
                }
            }

            labels[i] = present[(m - values[i]) % m];
        }
    }

    /// <summary>The labels by the definition, in <c>O(N^3)</c> (Match3) or <c>O(N^2)</c> (Match2): the reference the tests compare with.</summary>
    /// <param name="task">The task.</param>
    /// <param name="values">The N values, each in <c>[0, M)</c>.</param>
    /// <returns>The N labels.</returns>
    public static bool[] BruteForceLabels(MatchTask task, ReadOnlySpan<int> values)
    {
        ArgumentNullException.ThrowIfNull(task);
        int n = values.Length;
        long m = task.Modulus;
        CheckValues(values, task.Modulus);
        var labels = new bool[n];
        for (int i = 0; i < n; i++)
        {
            int last = task.Causal ? i : n - 1;
            for (int j1 = 0; j1 <= last && !labels[i]; j1++)
            {
                if (task.Kind == MatchKind.Match2)
                {
                    labels[i] = ((long)values[i] + values[j1]) % m == 0;
                    continue;
                }

                for (int j2 = 0; j2 <= last && !labels[i]; j2++)
                {
                    labels[i] = ((long)values[i] + values[j1] + values[j2]) % m == 0;
                }
            }
        }

        return labels;
    }

    private static void CheckValues(ReadOnlySpan<int> values, int m)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if ((uint)values[i] >= (uint)m)
            {
                throw new ArgumentException($"value {values[i]} at position {i} is outside [0, {m}).", nameof(values));
            }
        }
    }

    private static void SampleFull(MatchTask task, ref SplitMix random, Forbidden state, Span<int> values)
    {
        int n = task.Length, m = task.Modulus;
        int group = task.Kind == MatchKind.Match3 ? 3 : 2;
        var order = new int[n];
        for (int i = 0; i < n; i++)
        {
            order[i] = i;
        }

        for (int i = n - 1; i > 0; i--)
        {
            int j = random.Below(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }

        // Groups so that E[positives] = N / 2: floor(N / (2 group)) groups plus one more with the fractional probability.
        double expected = n / (2.0 * group);
        int groups = (int)Math.Floor(expected) + (random.Below(1 << 24) < (expected - Math.Floor(expected)) * (1 << 24) ? 1 : 0);
        groups = Math.Min(groups, n / group);
        int k = 0;
        for (int g = 0; g < groups; g++)
        {
            int a = random.Below(m);
            if (group == 3)
            {
                int b = random.Below(m);
                state.Add(values[order[k++]] = a);
                state.Add(values[order[k++]] = b);
                state.Add(values[order[k++]] = (int)((2L * m - a - b) % m));
            }
            else
            {
                state.Add(values[order[k++]] = a);
                state.Add(values[order[k++]] = (m - a) % m);
            }
        }

        for (; k < n; k++)
        {
            state.Add(values[order[k]] = state.DrawNegative(ref random));
        }
    }

    private static void SampleCausal(MatchTask task, ref SplitMix random, Forbidden state, Span<int> values)
    {
        int m = task.Modulus;
        bool three = task.Kind == MatchKind.Match3;
        for (int i = 0; i < task.Length; i++)
        {
            // Witnesses strictly before i, within the spans: j1 in [lo, i), j2 in [lo2, i).
            int lo = task.Span is { } span ? Math.Max(0, i - span + 1) : 0;
            int lo2 = task.Span2 is { } span2 ? Math.Max(0, i - span2 + 1) : lo;
            bool positive = i > Math.Max(lo, lo2) && random.Below(2) == 0;
            int v;
            if (positive)
            {
                int j1 = lo + random.Below(i - lo);
                v = three ? (int)((2L * m - values[j1] - values[lo2 + random.Below(i - lo2)]) % m) : (m - values[j1]) % m;
            }
            else
            {
                v = state.DrawNegative(ref random);
            }

            state.Add(values[i] = v);
        }
    }

    /// <summary>The values a new negative may not take given those written so far, kept as presence tables for O(1) checks.</summary>
    private sealed class Forbidden(MatchKind kind, int m)
    {
        private readonly bool[] value = new bool[m];
        private readonly bool[] pairSum = kind == MatchKind.Match3 ? new bool[m] : [];
        private readonly List<int> written = [];

        public void Add(int v)
        {
            if (kind == MatchKind.Match3)
            {
                foreach (int a in written)
                {
                    pairSum[(int)(((long)a + v) % m)] = true;
                }

                pairSum[(int)(2L * v % m)] = true;
            }

            value[v] = true;
            written.Add(v);
        }

        /// <summary>A uniform value that keeps itself and every written negative negative (the modulus check guarantees one exists).</summary>
        public int DrawNegative(ref SplitMix random)
        {
            for (int attempt = 0; attempt < 64; attempt++)
            {
                int v = random.Below(m);
                if (Allowed(v))
                {
                    return v;
                }
            }

            var allowed = Enumerable.Range(0, m).Where(Allowed).ToArray();
            return allowed.Length > 0 ? allowed[random.Below(allowed.Length)]
                : throw new InvalidOperationException($"no negative value is left at M = {m}; the task's modulus check should have prevented this.");
        }

        private bool Allowed(int v)
        {
            long minus = (m - v) % m;
            if (kind == MatchKind.Match2)
            {
                // v + a = 0 and 2v = 0.
                return !value[minus] && 2L * v % m != 0;
            }

            // v + a + b = 0 (a, b written, a = b allowed), 2v + a = 0, 3v = 0.
            return !pairSum[minus] && !value[(int)((2L * m - 2L * v) % m)] && 3L * v % m != 0;
        }
    }
}
