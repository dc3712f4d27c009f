using FastAttention.Tests.Support;
using FastAttention.Torch.Tests.Support;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Torch.Tests;

/// <summary>
/// FastAttentionFunctions.PolynomialAttention and SketchedAttention: forward and gradients are the library's Compute and
/// Backward bit for bit, and the gradients are the derivatives of the library's forward (central finite differences on tiny
/// shapes: the polynomial's coefficients and the sketch are not reachable from the public API, so no torch formula can rebuild them).
/// </summary>
public sealed class FactorisedAttentionFunctionTests
{
    public static TheoryData<string> Named => [.. Cases.Keys];

    public static TheoryData<string> Tiny => [.. Cases.Keys.Where(k => k.StartsWith("tiny", StringComparison.Ordinal))];

    private static readonly Dictionary<string, (AttentionShape Shape, object Options)> Cases = new()
    {
        ["polynomial"] = (new AttentionShape(2, 2, 7, 31, 8, 8), new PolynomialAttentionOptions()),
        ["polynomial, causal, gqa, degree 4"] = (new AttentionShape(1, 4, 33, 33, 8, 15, 2), new PolynomialAttentionOptions { Causal = true, Degree = 4 }),
        ["polynomial, nq 1, d 1, eps 1e-6"] = (new AttentionShape(2, 1, 1, 113, 1, 8), new PolynomialAttentionOptions { RelativeError = 1e-6, Scale = 0.5f }),
        ["sketched"] = (new AttentionShape(2, 2, 7, 31, 15, 8), new SketchedAttentionOptions { SketchSize = 32 }),
        ["sketched, causal, gqa, m 8, seed 5"] = (new AttentionShape(1, 6, 33, 33, 64, 8, 3), new SketchedAttentionOptions { SketchSize = 8, Seed = 5, Causal = true }),
        ["tiny polynomial"] = (new AttentionShape(1, 2, 3, 4, 2, 2), new PolynomialAttentionOptions { Scale = 0.5f }),
        ["tiny polynomial, causal, gqa, degree 3"] = (new AttentionShape(1, 2, 4, 4, 3, 2, 1), new PolynomialAttentionOptions { Causal = true, Degree = 3 }),
        ["tiny sketched"] = (new AttentionShape(1, 2, 3, 4, 2, 2), new SketchedAttentionOptions { SketchSize = 4, Seed = 3 }),
        ["tiny sketched, causal, gqa"] = (new AttentionShape(1, 2, 4, 4, 3, 2, 1), new SketchedAttentionOptions { SketchSize = 6, Seed = 9, Causal = true }),
    };

    [Theory]
    [MemberData(nameof(Named))]
    public void Forward_and_gradients_are_the_library_s_bit_for_bit(string name)
    {
        using var scope = TorchReference.Start();
        var (s, options, q, k, v, weights, output, grads) = Run(name, 500);

        var expected = Library(s, options, q, k, v);
        Assert.Equal(expected, output);
        var (dq, dk, dv) = (new float[s.QueryLength], new float[s.KeyLength], new float[s.ValueLength]);
        if (options is PolynomialAttentionOptions p)
        {
            PolynomialAttention.Backward(q, k, v, expected, weights, s, dq, dk, dv, p);
        }
        else
        {
            SketchedAttention.Backward(q, k, v, expected, weights, s, dq, dk, dv, (SketchedAttentionOptions)options);
        }

        Assert.Equal(dq, grads[0]);
        Assert.Equal(dk, grads[1]);
        Assert.Equal(dv, grads[2]);
    }

    [Theory]
    [MemberData(nameof(Tiny))]
    public void Gradients_match_central_finite_differences_of_the_library_forward(string name)
    {
        using var scope = TorchReference.Start();
        var (s, options, q, k, v, weights, _, grads) = Run(name, 600);

        // The polynomial is fitted to R = s max|q_i| max|k_j| and then held fixed: perturbing the longest query or key row moves
        // R (and the coefficients) as well, which the gradient leaves out by design, so those rows are not probed.
        bool polynomial = options is PolynomialAttentionOptions;
        float[][] inputs = [q, k, v];
        int[] rows = [s.HeadDim, s.HeadDim, s.ValueDim];
        int[] longest = [LongestRow(q, s.HeadDim), LongestRow(k, s.HeadDim), -1];
        const float h = 1f / 32;
        int probed = 0;
        for (int t = 0; t < 3; t++)
        {
            for (int e = 0; e < inputs[t].Length; e++)
            {
                if (polynomial && e / rows[t] == longest[t])
                {
                    continue;
                }

                // Richardson's combination of the central differences at h and h / 2 (error O(h^4)).
                double Central(float step)
                {
                    float x = inputs[t][e];
                    inputs[t][e] = x + step;
                    double plus = Loss(Library(s, options, q, k, v), weights);
                    inputs[t][e] = x - step;
                    double minus = Loss(Library(s, options, q, k, v), weights);
                    inputs[t][e] = x;
                    return (plus - minus) / ((double)(x + step) - (x - step));
                }

                double difference = ((4 * Central(h / 2)) - Central(h)) / 3;
                double g = grads[t][e];
                Assert.True(Math.Abs(g - difference) <= 2e-3 + (1e-2 * Math.Abs(difference)),
                    $"{name}: input {t} element {e}: gradient {g}, central difference {difference}");
                probed++;
            }
        }

        Assert.True(probed > (q.Length + k.Length + v.Length) / 2, $"{name}: only {probed} elements probed");
    }

    [Fact]
    public void A_fine_polynomial_s_gradients_are_close_to_softmax_attention_s()
    {
        // The polynomial replaces e^x to relative error 1e-7 on [-R, R]: its gradients must be those of softmax attention
        // (float64 autograd) up to that approximation.
        using var scope = TorchReference.Start();
        var s = new AttentionShape(1, 2, 7, 9, 4, 4);
        var (q, k, v) = Data.Inputs(s, 91);
        var weights = Data.Normal(s.OutputLength, 92);
        var (_, grads) = Ours(s, new PolynomialAttentionOptions { RelativeError = 1e-7 }, q, k, v, weights);
        var leaves = (TorchReference.Leaf(q, TorchReference.QueryDims(s)), TorchReference.Leaf(k, TorchReference.KeyDims(s)), TorchReference.Leaf(v, TorchReference.ValueDims(s)));
        var reference = TorchReference.Softmax(leaves.Item1, leaves.Item2, leaves.Item3, s, 1 / Math.Sqrt(s.HeadDim), false).Gradients(weights, leaves);
        double[][] expected = [reference.Query, reference.Key, reference.Value];
        for (int t = 0; t < 3; t++)
        {
            double error = Tolerance.MaxAbsError(grads[t], expected[t]);
            Assert.True(error <= 1e-4 * Math.Max(1, expected[t].Max(Math.Abs)), $"gradient {t}: {error:E3} from softmax attention's");
        }
    }

    [Fact]
    public void Non_finite_output_gradient_gives_nan_gradients_instead_of_ending_the_process()
    {
        using var scope = TorchReference.Start();
        var s = new AttentionShape(1, 1, 4, 6, 8, 8);
        var (q, k, v) = Data.Inputs(s, 61);
        foreach (bool sketched in new[] { false, true })
        {
            var query = Float32Tensors.Leaf(q, TorchReference.QueryDims(s));
            var (key, value) = (Float32Tensors.Constant(k, TorchReference.KeyDims(s)), Float32Tensors.Constant(v, TorchReference.ValueDims(s)));
            var output = sketched ? FastAttentionFunctions.SketchedAttention(query, key, value) : FastAttentionFunctions.PolynomialAttention(query, key, value);
            var weights = ones_like(output);
            weights[0, 0, 3, 0] = tensor(float.NegativeInfinity);
            (output * weights).sum().backward();
            Assert.All(Float32Tensors.Values(query.grad!), x => Assert.True(float.IsNaN(x)));
        }
    }

    [Fact]
    public void Bad_inputs_are_errors_naming_the_argument()
    {
        using var scope = TorchReference.Start();
        var x = randn(1, 2, 4, 8);
        Assert.Equal("sketchSize", Assert.Throws<ArgumentOutOfRangeException>(() => FastAttentionFunctions.SketchedAttention(x, x, x, sketchSize: 0)).ParamName);
        Assert.Equal("value", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.SketchedAttention(x, x, x.to_type(ScalarType.Float64))).ParamName);
        Assert.Equal("key", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.PolynomialAttention(x, randn(2, 4, 8), x)).ParamName);
        Assert.Equal("scale", Assert.Throws<ArgumentException>(() => FastAttentionFunctions.PolynomialAttention(x, x, x, scale: double.PositiveInfinity)).ParamName);
        // Scores too wide for the polynomial: the core's range error, before any work.
        var wide = x * 3;
        Assert.Throws<ArgumentOutOfRangeException>(() => FastAttentionFunctions.PolynomialAttention(wide, wide, wide, degree: 2));
        var empty = zeros(1, 2, 0, 8);
        Assert.Throws<ArgumentException>(() => FastAttentionFunctions.SketchedAttention(empty, x, x));
        Assert.Throws<ArgumentException>(() => FastAttentionFunctions.PolynomialAttention(x, empty, empty));
    }

    [Fact]
    public void Modules_run_their_function_and_describe_themselves()
    {
        using var scope = TorchReference.Start();
        var (q, k, v) = (0.3f * randn(1, 2, 5, 8), 0.3f * randn(1, 1, 7, 8), randn(1, 1, 7, 8));
        using var polynomial = new PolynomialAttentionModule(degree: 4, causal: true);
        using var sketched = new SketchedAttentionModule(sketchSize: 16, seed: 2);
        Assert.Equal(Float32Tensors.Values(FastAttentionFunctions.PolynomialAttention(q, k, v, degree: 4, causal: true)), Float32Tensors.Values(polynomial.forward(q, k, v)));
        Assert.Equal(Float32Tensors.Values(FastAttentionFunctions.SketchedAttention(q, k, v, 16, 2)), Float32Tensors.Values(sketched.forward(q, k, v)));
        Assert.Equal("polynomial(degree=4, causal)", polynomial.Describe());
        Assert.Equal("polynomial(eps=1E-05)", new PolynomialAttentionModule(relativeError: 1e-5).Describe());
        Assert.Equal("sketched(m=16, seed=2)", sketched.Describe());
    }

    /// <summary>A named case's seeded inputs and output weights, and our output and gradients on them.</summary>
    private static (AttentionShape Shape, object Options, float[] Q, float[] K, float[] V, float[] Weights, float[] Output, float[][] Gradients) Run(string name, int seed)
    {
        var (s, options) = Cases[name];
        var (q, k, v) = Inputs(s, options, seed + name.Length);
        var weights = Data.Normal(s.OutputLength, seed + 1 + name.Length);
        var (output, grads) = Ours(s, options, q, k, v, weights);
        return (s, options, q, k, v, weights, output, grads);
    }

    /// <summary>Seeded inputs; for the polynomial, queries and keys shrunk so that the score range suits small degrees.</summary>
    private static (float[] Q, float[] K, float[] V) Inputs(AttentionShape s, object options, int seed)
    {
        var (q, k, v) = Data.Inputs(s, seed);
        return options is PolynomialAttentionOptions ? (Array.ConvertAll(q, x => 0.3f * x), Array.ConvertAll(k, x => 0.3f * x), v) : (q, k, v);
    }

    /// <summary>Our function's output and the gradients of sum(O * W) through TorchSharp autograd.</summary>
    private static (float[] Output, float[][] Gradients) Ours(AttentionShape s, object options, float[] q, float[] k, float[] v, float[] weights)
    {
        var (tq, tk, tv) = (Float32Tensors.Leaf(q, TorchReference.QueryDims(s)), Float32Tensors.Leaf(k, TorchReference.KeyDims(s)), Float32Tensors.Leaf(v, TorchReference.ValueDims(s)));
        var output = options is PolynomialAttentionOptions p
            ? FastAttentionFunctions.PolynomialAttention(tq, tk, tv, p.Degree, p.RelativeError, p.Causal, p.Scale)
            : FastAttentionFunctions.SketchedAttention(tq, tk, tv, ((SketchedAttentionOptions)options).SketchSize, ((SketchedAttentionOptions)options).Seed,
                ((SketchedAttentionOptions)options).Causal, ((SketchedAttentionOptions)options).Scale);
        (output * Float32Tensors.Constant(weights, TorchReference.OutputDims(s))).sum().backward();
        return (Float32Tensors.Values(output), [Float32Tensors.Values(tq.grad!), Float32Tensors.Values(tk.grad!), Float32Tensors.Values(tv.grad!)]);
    }

    /// <summary>The library's forward for the options.</summary>
    private static float[] Library(AttentionShape s, object options, float[] q, float[] k, float[] v)
    {
        var output = new float[s.OutputLength];
        _ = options is PolynomialAttentionOptions p
            ? (object)PolynomialAttention.Compute(q, k, v, s, output, p)
            : SketchedAttention.Compute(q, k, v, s, output, (SketchedAttentionOptions)options);
        return output;
    }

    private static double Loss(float[] output, float[] weights)
    {
        double sum = 0;
        for (int i = 0; i < output.Length; i++)
        {
            sum += (double)output[i] * weights[i];
        }

        return sum;
    }

    /// <summary>The index of the row with the largest Euclidean norm.</summary>
    private static int LongestRow(float[] x, int rowLength)
    {
        int best = 0;
        double bestNorm = -1;
        for (int r = 0; r < x.Length / rowLength; r++)
        {
            double norm = 0;
            for (int c = 0; c < rowLength; c++)
            {
                norm += (double)x[(r * rowLength) + c] * x[(r * rowLength) + c];
            }

            (best, bestNorm) = norm > bestNorm ? (r, norm) : (best, bestNorm);
        }

        return best;
    }
}
