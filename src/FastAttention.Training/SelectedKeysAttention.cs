using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>
/// The LevAttention experiment's baselines: softmax attention over a per-(batch, kv head) subset of the keys that is
/// chosen without looking at leverage scores, always including the first <c>keepFirst</c> keys (the CLS token). The kept
/// keys and values are gathered and attended with <see cref="FastAttentionFunctions.ScaledDotProductAttention"/>; the
/// gradient flows through the gather to the kept keys and values (zero elsewhere) and, like LevAttention's, not through
/// the choice itself.
/// </summary>
public abstract class SelectedKeysAttention : AttentionModule
{
    /// <summary>Sets how many keys are kept.</summary>
    /// <param name="name">The module's name.</param>
    /// <param name="top">Keys kept besides the always-kept ones.</param>
    /// <param name="keepFirst">The first keys that are always kept.</param>
    protected SelectedKeysAttention(string name, int top, int keepFirst)
        : base(name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(keepFirst);
        Top = top;
        KeepFirst = keepFirst;
    }

    /// <summary>Keys kept besides the always-kept ones.</summary>
    public int Top { get; }

    /// <summary>The first keys that are always kept.</summary>
    public int KeepFirst { get; }

    /// <inheritdoc/>
    public override Tensor forward(Tensor input1, Tensor input2, Tensor input3)
    {
        long nk = input2.size(2);
        if (nk <= KeepFirst + Top)
        {
            return FastAttentionFunctions.ScaledDotProductAttention(input1, input2, input3);
        }

        Tensor kept;
        using (no_grad())
        {
            // Scores over the candidate keys [batch, kvHeads, nk - keepFirst]; the top ones are kept.
            using var candidates = input2.narrow(2, KeepFirst, nk - KeepFirst).detach();
            using var scores = Scores(candidates);
            var (values, indexes) = scores.topk(Top, dim: 2);
            using var topScores = values;
            using var topIndexes = indexes;
            using var chosen = topIndexes + KeepFirst;
            using var first = arange(KeepFirst, ScalarType.Int64).expand(input2.size(0), input2.size(1), KeepFirst);
            kept = cat([first, chosen], 2);
        }

        using (kept)
        {
            using var keyIndex = kept.unsqueeze(-1).expand(-1, -1, -1, input2.size(3));
            using var valueIndex = kept.unsqueeze(-1).expand(-1, -1, -1, input3.size(3));
            using var keys = input2.gather(2, keyIndex);
            using var keptValues = input3.gather(2, valueIndex);
            return FastAttentionFunctions.ScaledDotProductAttention(input1, keys, keptValues);
        }
    }

    /// <summary>The score of each candidate key; the <see cref="Top"/> largest are kept.</summary>
    /// <param name="candidates">The candidate keys, <c>[batch, kvHeads, nk - keepFirst, d]</c>, detached.</param>
    /// <returns><c>[batch, kvHeads, nk - keepFirst]</c>.</returns>
    protected abstract Tensor Scores(Tensor candidates);
}

/// <summary>
/// Baseline (c): <see cref="SelectedKeysAttention.Top"/> keys drawn uniformly without replacement per (batch, kv head) and
/// call. The draw is a function of the seed and <see cref="Step"/> alone (torch's CPU generator seeded per call), so a run
/// resumed at a step draws what the uninterrupted run drew.
/// </summary>
/// <param name="top">Keys kept besides the always-kept ones.</param>
/// <param name="keepFirst">The first keys that are always kept.</param>
/// <param name="seed">The draws' seed (give each block its own).</param>
public sealed class RandomKeysAttention(int top, int keepFirst, long seed) : SelectedKeysAttention(nameof(RandomKeysAttention), top, keepFirst)
{
    /// <summary>The training step the next call belongs to; the trainer sets it before each step.</summary>
    public long Step { get; set; }

    /// <summary>
    /// Where the next call's batch starts in the step's whole batch (0 unless the batch is one rank's slice of a
    /// data-parallel step); with <see cref="BatchTotal"/> it makes a slice draw exactly the rows the whole batch draws.
    /// </summary>
    public int BatchOffset { get; set; }

    /// <summary>The size of the step's whole batch when the next call's batch is a slice of it (0: the call's batch is the whole batch).</summary>
    public int BatchTotal { get; set; }

    /// <inheritdoc/>
    public override string Describe() => $"random(top={Top}, first={KeepFirst})";

    /// <inheritdoc/>
    protected override Tensor Scores(Tensor candidates)
    {
        using var generator = new Generator(unchecked((ulong)(seed * 1_000_003 + Step)));
        long batch = candidates.size(0);
        long drawn = Math.Max(BatchTotal, BatchOffset + batch);
        if (drawn == batch)
        {
            return rand([batch, candidates.size(1), candidates.size(2)], generator: generator);
        }

        // The CPU generator fills a tensor in order, so the whole batch's draw, narrowed, is the slice's rows of it.
        using var whole = rand([drawn, candidates.size(1), candidates.size(2)], generator: generator);
        return whole.narrow(0, BatchOffset, batch).contiguous();
    }
}

/// <summary>Baseline (d): the <see cref="SelectedKeysAttention.Top"/> keys of largest Euclidean norm per (batch, kv head).</summary>
/// <param name="top">Keys kept besides the always-kept ones.</param>
/// <param name="keepFirst">The first keys that are always kept.</param>
public sealed class LargestNormKeysAttention(int top, int keepFirst) : SelectedKeysAttention(nameof(LargestNormKeysAttention), top, keepFirst)
{
    /// <inheritdoc/>
    public override string Describe() => $"norm(top={Top}, first={KeepFirst})";

    /// <inheritdoc/>
    protected override Tensor Scores(Tensor candidates) => candidates.square().sum(-1);
}
