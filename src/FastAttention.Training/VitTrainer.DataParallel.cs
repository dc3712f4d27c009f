namespace FastAttention.Training;

/// <summary>
/// Data parallelism: with P ranks and the same global batch B, every rank shuffles the same global order (the seed),
/// takes its contiguous slice of each global batch, and weights its mean loss by slice / B, so the sum over the ranks
/// of its loss and gradients is one process's mean over the global batch. The gradients are summed over the ranks in
/// one reduction per step, before AdamW's step, so every rank applies the same update and keeps the same weights; the
/// reported loss and hits are the summed, global ones. The model has no dropout; the random-key draws are keyed by the
/// step and each slice takes its rows of the global batch's draw, so P ranks see what one process sees. Evaluation is
/// split by chunks over the ranks and its hits summed. Only the order of floating-point sums differs from one process.
/// </summary>
public sealed partial class VitTrainer
{
    /// <summary>The scalars reduced with the gradients: the weighted loss, the hits, the ranks that were asked to stop.</summary>
    private const int StepScalars = 3;

    private static readonly Lock Seeding = new();

    /// <summary>The ranks (null for one process).</summary>
    private readonly IGradientReducer? reducer;

    private readonly GradientBuffer? gradients;

    /// <summary>Some rank was asked to stop at the last reduction: every rank stops at the same step boundary.</summary>
    private bool stopAgreed;

    /// <summary>This process's rank in a data-parallel run (0 alone).</summary>
    public int Rank => reducer?.Rank ?? 0;

    /// <summary>The number of ranks training together (1 alone).</summary>
    public int Ranks => reducer?.Size ?? 1;

    private static void ValidateReducer(IGradientReducer? reducer)
    {
        if (reducer is not null && (reducer.Size < 1 || reducer.Rank < 0 || reducer.Rank >= reducer.Size))
        {
            throw new ArgumentException($"the reducer's rank {reducer.Rank} is not in 0..{reducer.Size - 1} (size {reducer.Size})", nameof(reducer));
        }
    }

    /// <summary>
    /// Every rank starts from rank 0's weights: the ranks seeded the same generator, but a draw's bits may depend on the
    /// CPU's vector width, and the ranks may run on different machines.
    /// </summary>
    private void TakeRankZeroWeights() => gradients?.TakeRankZeroParameters(reducer!);

    private bool StopRequested(CancellationToken cancellationToken) => reducer is null ? cancellationToken.IsCancellationRequested : stopAgreed;

    /// <summary>This rank's contiguous share of a global batch of <paramref name="count"/> images: ranks differ by at most one image, and a rank may get none.</summary>
    private (int Offset, int Count) Slice(int count)
    {
        if (reducer is null)
        {
            return (0, count);
        }

        int start = (int)((long)count * reducer.Rank / reducer.Size), end = (int)((long)count * (reducer.Rank + 1) / reducer.Size);
        return (start, end - start);
    }

    /// <summary>Keys the random-key draws: the step, and where this call's batch sits in the global batch.</summary>
    private void SetDraws(int offset, int total, long? step = null)
    {
        foreach (var attention in Model.Attention.OfType<RandomKeysAttention>())
        {
            attention.Step = step ?? attention.Step;
            attention.BatchOffset = offset;
            attention.BatchTotal = total;
        }
    }

    /// <summary>The one reduction of a step: gradients, loss share, hits and stop flag; throws on every rank when the global loss is not finite.</summary>
    private (float Loss, long Right) SumStep(float loss, long right, CancellationToken cancellationToken)
    {
        var scalars = gradients!.Scalars.Span;
        scalars[0] = loss;
        scalars[1] = right;
        scalars[2] = cancellationToken.IsCancellationRequested ? 1 : 0;
        gradients.Sum(reducer!);
        (loss, right, stopAgreed) = (scalars[0], (long)scalars[1], scalars[2] > 0);
        if (!float.IsFinite(loss))
        {
            // Every rank holds the same sum, so every rank throws here, before the update.
            throw Diverged(loss);
        }

        gradients.Scatter();
        return (loss, right);
    }

    /// <summary>Sums the ranks' test hits (exact in float up to 2^24 images); true when some rank was asked to stop.</summary>
    private bool SumEvaluation(ref long right, CancellationToken cancellationToken)
    {
        Span<float> values = [right, cancellationToken.IsCancellationRequested ? 1 : 0];
        reducer!.SumInPlace(values);
        right = (long)values[0];
        stopAgreed |= values[1] > 0;
        return values[1] > 0;
    }
}
