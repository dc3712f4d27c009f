using System.Diagnostics;

namespace FastAttention.Lab;

/// <summary>The table's backward slots: per method a training forward and a gradient pass, joined by <see cref="Training"/>.</summary>
public static partial class MethodTable
{
    /// <summary>The names of the methods with a backward, in table order.</summary>
    public static IReadOnlyList<string> WithBackward => [.. All.Where(m => m.HasBackward).Select(m => m.Name)];

    /// <summary>What a command says of a method without a backward: one line naming it and the methods that have one.</summary>
    /// <param name="name">The method's name.</param>
    /// <returns>The message.</returns>
    public static string NoBackward(string name) => $"{name} has no backward yet (methods with one: {string.Join(", ", WithBackward)})";

    /// <summary>
    /// A method's training forward: computes <paramref name="output"/> (<c>[batch, heads, nq, dv]</c>) and, for the methods
    /// that keep it, each row's log-sum-exp into <paramref name="logSumExp"/> (<c>[batch, heads, nq]</c>); returns its report,
    /// which carries whatever else the backward needs (lev: the selections).
    /// </summary>
    private delegate MethodRun TrainingForward(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s);

    /// <summary>
    /// A method's backward: from the training forward's <paramref name="run"/>, <paramref name="output"/> and
    /// <paramref name="logSumExp"/> and dO, the gradients into <paramref name="gradients"/> (queries, every key tensor,
    /// every value tensor, each in its input's layout); returns the library's report (kernel, flops).
    /// </summary>
    private delegate AttentionRun GradientPass(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] gradients, MethodSettings s);

    /// <summary>
    /// The backward slot of a method: allocates the output, log-sum-exp and gradients, runs <paramref name="forward"/> then
    /// <paramref name="backward"/>, each timed, and names the gradients (<see cref="MethodGradients.NamesOf"/>). Adding a
    /// method's backward is one such pair.
    /// </summary>
    private static MethodBackward Training(TrainingForward forward, GradientPass backward, MethodFlops forwardFlops) => (x, shape, outputGradient, s) =>
    {
        var output = new float[shape.OutputLength];
        var logSumExp = new float[(long)shape.BatchSize * shape.HeadCount * shape.QueryCount];
        float[][] gradients = [new float[x.Query.Length], .. x.Keys.Select(k => new float[k.Length]), .. x.Values.Select(v => new float[v.Length])];
        var watch = Stopwatch.StartNew();
        MethodRun run = forward(x, shape, output, logSumExp, s);
        double forwardSeconds = watch.Elapsed.TotalSeconds;
        watch.Restart();
        AttentionRun pass = backward(x, shape, run, output, logSumExp, outputGradient, gradients, s);
        double backwardSeconds = watch.Elapsed.TotalSeconds;
        IReadOnlyList<string> names = MethodGradients.NamesOf(x.Keys.Count);
        return new MethodGradients(run, pass.Kernel, [.. names.Select((name, i) => new NamedGradient(name, gradients[i]))], output,
            forwardFlops(shape, s, run), pass.Flops, forwardSeconds, backwardSeconds);
    };

    private static MethodRun ExactTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        new(ExactAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, logSumExp, ExactOptions(s)).Kernel);

    private static AttentionRun ExactGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s) =>
        ExactAttention.Backward(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, output, outputGradient.Span, logSumExp, shape, g[0], g[1], g[2], ExactOptions(s));

    private static MethodRun PowerTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        new(PowerAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, logSumExp, PowerOptions(s)).Kernel);

    private static AttentionRun PowerGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s) =>
        PowerAttention.Backward(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, output, outputGradient.Span, logSumExp, shape, g[0], g[1], g[2], PowerOptions(s));

    // The polynomial methods keep no log-sum-exp: the backward recomputes each row's normaliser from the features.
    private static MethodRun PolynomialTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        Polynomial(x, shape, output, s);

    private static AttentionRun PolynomialGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s)
    {
        PolynomialCertificate certificate = PolynomialAttention.Backward(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, output, outputGradient.Span, shape, g[0], g[1], g[2], PolynomialOptions(s));
        return new AttentionRun(run.Kernel, PolynomialAttention.PredictedBackwardFlops(shape, certificate.Rank));
    }

    private static MethodRun SketchTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        Sketch(x, shape, output, s);

    private static AttentionRun SketchGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s)
    {
        SketchReport report = SketchedAttention.Backward(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, output, outputGradient.Span, shape, g[0], g[1], g[2], SketchOptions(s));
        return new AttentionRun(run.Kernel, PolynomialAttention.PredictedBackwardFlops(shape, report.Rank));
    }

    private static MethodRun TensorTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        new(TensorAttention.Compute(x.Query.Span, x.Keys, x.Values, TensorShape(shape), output, logSumExp, TensorOptions(s)).Kernel);

    private static AttentionRun TensorGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s)
    {
        int keyTensors = x.Keys.Count;
        Memory<float>[] keyGradients = [.. g.Skip(1).Take(keyTensors).Select(a => a.AsMemory())];
        Memory<float>[] valueGradients = [.. g.Skip(1 + keyTensors).Select(a => a.AsMemory())];
        return TensorAttention.Backward(x.Query.Span, x.Keys, x.Values, output, outputGradient.Span, logSumExp, TensorShape(shape), g[0], keyGradients, valueGradients, TensorOptions(s));
    }

    // lev: the forward's selections travel in its MethodRun; the backward flows to the kept keys only (the selection carries no gradient).
    private static MethodRun LevTraining(MethodInputs x, AttentionShape shape, float[] output, float[] logSumExp, MethodSettings s) =>
        new("lev-softmax", Selections: LevAttention.Compute(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, shape, output, logSumExp, LevOptions(s)));

    private static AttentionRun LevGradients(MethodInputs x, AttentionShape shape, MethodRun run, float[] output, float[] logSumExp,
        ReadOnlyMemory<float> outputGradient, float[][] g, MethodSettings s)
    {
        LevAttention.Backward(x.Query.Span, x.Keys[0].Span, x.Values[0].Span, output, outputGradient.Span, logSumExp, run.Selections!, shape, g[0], g[1], g[2], LevOptions(s));
        double kept = run.MeanKeptKeys ?? 0;
        return new AttentionRun("lev-backward", 2.0 * shape.BatchSize * shape.HeadCount * shape.QueryCount * kept * ((3.0 * shape.HeadDim) + (2.0 * shape.ValueDim)));
    }
}
