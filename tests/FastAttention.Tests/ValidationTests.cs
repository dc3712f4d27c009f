using FastAttention.Leverage;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// The one validator: every public entry point gets the same bad inputs (kv heads not dividing query heads, a zero size,
/// a too-short input, a too-short destination, a destination overlapping an input) and must throw
/// <see cref="ArgumentException"/> naming the parameter, with the same message wherever the input is the same.
/// </summary>
public class ValidationTests
{
    /// <summary>A call of one method on (query, key, value, shape, destination).</summary>
    public delegate void Call(ReadOnlySpan<float> query, ReadOnlySpan<float> key, ReadOnlySpan<float> value, AttentionShape shape, Span<float> destination);

    private static readonly Dictionary<string, Call> Methods = new()
    {
        ["exact"] = (q, k, v, s, o) => ExactAttention.Compute(q, k, v, s, o),
        ["exact-lse"] = (q, k, v, s, o) => ExactAttention.Compute(q, k, v, s, o, new float[Math.Max(1, s.BatchSize * s.HeadCount * s.QueryCount)]),
        ["power"] = (q, k, v, s, o) => PowerAttention.Compute(q, k, v, s, o),
        ["poly"] = (q, k, v, s, o) => PolynomialAttention.Compute(q, k, v, s, o),
        ["even-power"] = (q, k, v, s, o) => PolynomialAttention.ComputeEvenPower(q, k, v, s, o, 2),
        ["sketch"] = (q, k, v, s, o) => SketchedAttention.Compute(q, k, v, s, o),
        ["lev"] = (q, k, v, s, o) => LevAttention.Compute(q, k, v, s, o, new LevAttentionOptions { Top = 2 }),
        ["reference"] = (q, k, v, s, o) => ReferenceAttention.Compute(q, k, v, s, new double[o.Length]),
    };

    public static TheoryData<string> MethodNames() => [.. Methods.Keys];

    private static readonly AttentionShape Good = new(1, 4, 3, 5, 2, 3, KeyValueHeadCount: 2);

    private static ArgumentException Throws(Call call, float[] q, float[] k, float[] v, AttentionShape s, float[] o) =>
        Assert.Throws<ArgumentException>(() => call(q, k, v, s, o));

    private static void AssertWording(ArgumentException ex, string parameter)
    {
        Assert.Equal(parameter, ex.ParamName);
        Assert.Matches($"^{System.Text.RegularExpressions.Regex.Escape(parameter)}: .+; got .+, expected .+\\. Hint: .+", ex.Message);
    }

    /// <summary>The message each bad input gets from the exact kernel, which every other method must repeat word for word.</summary>
    private static string ExactMessage(Func<Call, ArgumentException> bad) => bad(Methods["exact"]).Message;

    private static IEnumerable<(string Case, string Parameter, Func<Call, ArgumentException> Bad)> BadInputs()
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(Good, 3);
        float[] o = new float[Good.OutputLength];

        AttentionShape threeOnTwo = Good with { HeadCount = 3 };
        (float[] q3, float[] k3, float[] v3) = Data.Inputs(threeOnTwo, 3);
        yield return ("heads not dividing", "shape", c => Throws(c, q3, k3, v3, threeOnTwo, new float[threeOnTwo.OutputLength]));

        AttentionShape empty = Good with { KeyCount = 0 };
        yield return ("zero keys", "shape", c => Throws(c, q, [], [], empty, o));
        yield return ("short query", "query", c => Throws(c, q[1..], k, v, Good, o));
        yield return ("short key", "key", c => Throws(c, q, k[1..], v, Good, o));
        yield return ("short value", "value", c => Throws(c, q, k, v[1..], Good, o));
        yield return ("short destination", "destination", c => Throws(c, q, k, v, Good, o[1..]));

        // The destination starts inside the key buffer.
        float[] shared = new float[k.Length + o.Length];
        k.CopyTo(shared, 0);
        yield return ("destination overlapping the key", "destination",
            c => Assert.Throws<ArgumentException>(() => c(q, shared.AsSpan(0, k.Length), v, Good, shared.AsSpan(k.Length - 1, o.Length))));
    }

    [Theory]
    [MemberData(nameof(MethodNames))]
    public void Every_method_rejects_the_same_bad_inputs_with_the_same_message(string method)
    {
        foreach ((string name, string parameter, Func<Call, ArgumentException> bad) in BadInputs())
        {
            if (name == "destination overlapping the key" && method == "reference")
            {
                // Its destination is a double buffer of its own; overlap for it is the same check (by bytes), exercised below.
                continue;
            }

            ArgumentException ex = bad(Methods[method]);
            AssertWording(ex, parameter);
            Assert.True(ExactMessage(bad) == ex.Message, $"{method}, {name}: '{ex.Message}' differs from exact attention's '{ExactMessage(bad)}'");
        }
    }

    [Fact]
    public void Overlap_is_detected_whatever_the_element_types_and_names_the_input()
    {
        (float[] q, float[] k, float[] v) = Data.Inputs(Good, 3);
        float[] big = new float[q.Length + Good.OutputLength];
        q.CopyTo(big, 0);
        var ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(big.AsSpan(0, q.Length), k, v, Good, big.AsSpan(q.Length - 1, (int)Good.OutputLength)));
        AssertWording(ex, "destination");
        Assert.Contains("overlaps query", ex.Message);

        float[] lse = new float[Good.BatchSize * Good.HeadCount * Good.QueryCount];
        float[] o = new float[Good.OutputLength + lse.Length];
        ex = Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, Good, o.AsSpan(0, (int)Good.OutputLength), o.AsSpan(1, lse.Length)));
        AssertWording(ex, "logSumExp");
        AssertWording(Assert.Throws<ArgumentException>(() => ExactAttention.Compute(q, k, v, Good, new float[Good.OutputLength], lse.AsSpan(1))), "logSumExp");
    }

    [Fact]
    public void LevAttention_with_three_query_heads_on_two_kv_heads_throws_instead_of_leaving_a_head_unwritten()
    {
        var shape = new AttentionShape(1, 3, 4, 6, 2, 2, KeyValueHeadCount: 2);
        (float[] q, float[] k, float[] v) = Data.Inputs(shape, 5);
        var ex = Assert.Throws<ArgumentException>(() => LevAttention.Compute(q, k, v, shape, new float[shape.OutputLength], new LevAttentionOptions { Top = 2 }));
        AssertWording(ex, "shape");
        Assert.Contains("2 kv heads for 3 query heads", ex.Message);
    }

    [Fact]
    public void InputAnalysis_uses_the_same_checks_and_words()
    {
        (float[] q, float[] k, _) = Data.Inputs(Good, 3);
        float[] o = new float[Good.OutputLength];
        foreach ((string name, string parameter, Func<Call, ArgumentException> bad) in BadInputs())
        {
            if (parameter is "value" or "destination")
            {
                continue; // Analyze takes no values and writes nothing
            }

            ArgumentException ex = bad((q2, k2, _, s, _) => InputAnalysis.Analyze(q2, k2, s));
            AssertWording(ex, parameter);
            Assert.Equal(ExactMessage(bad), ex.Message);
        }
    }

    [Fact]
    public void TensorAttention_uses_the_same_wording()
    {
        var shape = new TensorAttentionShape(2, 3, 4, 2, 2);
        float[] q = Data.Normal(shape.QueryLength, 1);
        ReadOnlyMemory<float>[] k = [Data.Normal(shape.KeyLength, 2), Data.Normal(shape.KeyLength, 3)];
        ReadOnlyMemory<float>[] v = [Data.Normal(shape.ValueLength, 4), Data.Normal(shape.ValueLength, 5)];
        float[] o = new float[shape.OutputLength];
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape with { KeyCount = 0 }, o)), "shape");
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q.AsSpan(1), k, v, shape, o)), "query");
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, [k[0], k[1][1..]], v, shape, o)), "key 2");
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape, o.AsSpan(1))), "destination");
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.Compute(q, k, v, shape, q.AsSpan(0, o.Length))), "destination");
        AssertWording(Assert.Throws<ArgumentException>(() => TensorAttention.ComputePolynomial(q, k, v, shape, o.AsSpan(1))), "destination");
        AssertWording(Assert.Throws<ArgumentException>(() => ReferenceTensorAttention.Compute(q, k, v, shape with { HeadDim = 0 }, new double[o.Length])), "shape");
    }

    [Fact]
    public void LevKvCache_uses_the_same_wording()
    {
        AssertWording(Assert.Throws<ArgumentException>(() => new LevKvCache(0, 2, new LevAttentionOptions { Top = 1 })), "dimension");
        AssertWording(Assert.Throws<ArgumentException>(() => new LevKvCache(2, 0, new LevAttentionOptions { Top = 1 })), "valueDimension");
        var cache = new LevKvCache(2, 3, new LevAttentionOptions { Top = 1 });
        AssertWording(Assert.Throws<ArgumentException>(() => cache.Append([1f], [1f, 2f, 3f])), "key");
        AssertWording(Assert.Throws<ArgumentException>(() => cache.Append([1f, 2f], [1f, 2f])), "value");
        cache.Append([1f, 2f], [1f, 2f, 3f]);
        AssertWording(Assert.Throws<ArgumentException>(() => cache.Attend([1f], new float[3])), "query");
        AssertWording(Assert.Throws<ArgumentException>(() => cache.Attend([1f, 2f], new float[2])), "output");
        float[] buffer = new float[4];
        AssertWording(Assert.Throws<ArgumentException>(() => cache.Attend(buffer.AsSpan(0, 2), buffer.AsSpan(1, 3))), "output");
    }

    [Fact]
    public void AttentionPartial_merge_checks_its_rows()
    {
        AssertWording(Assert.Throws<ArgumentException>(() => AttentionPartial.Merge(AttentionPartial.Empty, new float[3], AttentionPartial.Empty, new float[2], new float[3])), "secondOutput");
        AssertWording(Assert.Throws<ArgumentException>(() => AttentionPartial.Merge(AttentionPartial.Empty, new float[3], AttentionPartial.Empty, new float[3], new float[2])), "destination");
    }

    [Fact]
    public void GramState_is_public_and_checks_its_dimension() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new GramState(0));
}
