using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>
/// The ranks of a data-parallel run as the trainer sees them: which slice of each global batch this process takes, and
/// a sum over every rank of a float buffer. The trainer calls <see cref="SumInPlace"/> once per step (every parameter's
/// gradient plus the step's loss, hits and stop flag in one buffer) and once per evaluation, on every rank in the same
/// order, so an implementation can be a plain all-reduce (FastAttention.Distributed's <c>Communicator.AllreduceSum</c>).
/// </summary>
public interface IGradientReducer
{
    /// <summary>This process's rank, 0 to <see cref="Size"/> - 1; rank 0 writes the checkpoints.</summary>
    int Rank { get; }

    /// <summary>The number of ranks.</summary>
    int Size { get; }

    /// <summary>
    /// Replaces <paramref name="values"/> with their element-wise sum over all ranks. Every rank must receive the same
    /// bits (a fixed summation order), or the ranks' weights drift apart.
    /// </summary>
    /// <param name="values">This rank's values; the same length on every rank.</param>
    void SumInPlace(Span<float> values);
}

/// <summary>
/// One float buffer holding every parameter's gradient in parameter order, then a few scalars of the step, so a
/// data-parallel step costs one all-reduce however many tensors the model has.
/// </summary>
internal sealed class GradientBuffer
{
    private readonly Tensor[] parameters;
    private readonly float[] values;

    public GradientBuffer(IEnumerable<Tensor> parameters, int scalars)
    {
        this.parameters = [.. parameters];
        long total = this.parameters.Sum(p => p.numel());
        if (total + scalars > Array.MaxLength)
        {
            throw new ArgumentException($"the model's {total:N0} parameters do not fit one reduction buffer", nameof(parameters));
        }

        values = new float[total + scalars];
        Scalars = values.AsMemory((int)total);
    }

    /// <summary>The values after the gradients (the step's loss, hits, stop flag).</summary>
    public Memory<float> Scalars { get; }

    /// <summary>Gathers the gradients (zeros for a parameter without one: a rank with no images in the step), then sums the buffer over the ranks.</summary>
    public void Sum(IGradientReducer reducer)
    {
        Gather(parameter => parameter.grad);
        reducer.SumInPlace(values);
    }

    /// <summary>Makes every parameter's gradient the summed one, so each rank's optimizer applies the same update.</summary>
    public void Scatter() =>
        Spread((parameter, summed) =>
        {
            if (parameter.grad is { } grad)
            {
                grad.copy_(summed);
            }
            else
            {
                parameter.grad = summed.clone();
            }
        });

    /// <summary>Gives every rank rank 0's parameter values (the other ranks add zeros, which leaves rank 0's bits), in one reduction.</summary>
    public void TakeRankZeroParameters(IGradientReducer reducer)
    {
        Gather(parameter => reducer.Rank == 0 ? parameter : null);
        reducer.SumInPlace(values.AsSpan(0, values.Length - Scalars.Length));
        Spread((parameter, summed) => parameter.copy_(summed));
    }

    /// <summary>Copies each parameter's <paramref name="source"/> tensor (zeros when null) into the buffer, in parameter order.</summary>
    private void Gather(Func<Tensor, Tensor?> source)
    {
        int at = 0;
        foreach (var parameter in parameters)
        {
            int count = (int)parameter.numel();
            var slot = values.AsSpan(at, count);
            if (source(parameter) is { } tensor)
            {
                using var dense = tensor.detach().contiguous();
                dense.data<float>().CopyTo(slot);
            }
            else
            {
                slot.Clear();
            }

            at += count;
        }
    }

    /// <summary>Hands each parameter its slice of the buffer, shaped like it.</summary>
    private void Spread(Action<Tensor, Tensor> apply)
    {
        int at = 0;
        using var _ = no_grad();
        foreach (var parameter in parameters)
        {
            int count = (int)parameter.numel();
            using var summed = tensor(values.AsSpan(at, count).ToArray(), parameter.shape);
            apply(parameter, summed);
            at += count;
        }
    }
}
