using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter) as PyTorch's <c>torch.optim.AdamW</c> computes it (no amsgrad), with its moments held
/// as named tensors so a checkpoint stores them and a resumed run continues bit for bit:
/// <c>p -= lr wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps)</c>.
/// Weight decay applies to the parameters <see cref="Decays"/> names (matrices and convolution kernels, not biases,
/// norms, positions or the CLS token).
/// </summary>
public sealed class AdamW : IDisposable
{
    private readonly (string Name, Tensor Parameter, Tensor Average, Tensor SquareAverage, bool Decay)[] slots;

    /// <summary>Creates zero moments for every parameter.</summary>
    /// <param name="parameters">The model's named parameters.</param>
    /// <param name="beta1">The first-moment decay.</param>
    /// <param name="beta2">The second-moment decay.</param>
    /// <param name="epsilon">The denominator's epsilon.</param>
    /// <param name="weightDecay">The decoupled weight decay.</param>
    public AdamW(IEnumerable<(string Name, Tensor Parameter)> parameters, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8, double weightDecay = 0.05)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        (Beta1, Beta2, Epsilon, WeightDecay) = (beta1, beta2, epsilon, weightDecay);
        slots = [.. parameters.Select(p => (p.Name, p.Parameter, zeros_like(p.Parameter).DetachFromDisposeScope(), zeros_like(p.Parameter).DetachFromDisposeScope(), Decays(p.Name, p.Parameter)))];
    }

    /// <summary>The first-moment decay.</summary>
    public double Beta1 { get; }

    /// <summary>The second-moment decay.</summary>
    public double Beta2 { get; }

    /// <summary>The denominator's epsilon.</summary>
    public double Epsilon { get; }

    /// <summary>The decoupled weight decay.</summary>
    public double WeightDecay { get; }

    /// <summary>The number of steps taken (t in the bias corrections).</summary>
    public long Steps { get; set; }

    /// <summary>Whether a parameter is decayed: tensors of rank 2 or more, except the positions and the CLS token.</summary>
    /// <param name="name">The parameter's name.</param>
    /// <param name="parameter">The parameter.</param>
    /// <returns>Whether <see cref="WeightDecay"/> applies.</returns>
    public static bool Decays(string name, Tensor parameter) =>
        parameter.dim() >= 2 && name is not ("pos_embed" or "cls_token");

    /// <summary>The moments by name, <c>exp_avg.{parameter}</c> and <c>exp_avg_sq.{parameter}</c> (PyTorch's state names).</summary>
    /// <returns>The moment tensors (the optimizer's own; do not dispose).</returns>
    public IEnumerable<(string Name, Tensor Moment)> Moments()
    {
        foreach (var slot in slots)
        {
            yield return ($"exp_avg.{slot.Name}", slot.Average);
            yield return ($"exp_avg_sq.{slot.Name}", slot.SquareAverage);
        }
    }

    /// <summary>One step at learning rate <paramref name="learningRate"/> from the parameters' gradients (a missing gradient skips the parameter).</summary>
    /// <param name="learningRate">The step's learning rate.</param>
    public void Step(double learningRate)
    {
        Steps++;
        double correction1 = 1 - Math.Pow(Beta1, Steps);
        double correction2Root = Math.Sqrt(1 - Math.Pow(Beta2, Steps));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var (_, parameter, average, squareAverage, decay) in slots)
        {
            var grad = parameter.grad;
            if (grad is null)
            {
                continue;
            }

            if (decay && WeightDecay != 0)
            {
                parameter.mul_(1 - learningRate * WeightDecay);
            }

            average.lerp_(grad, 1 - Beta1);
            squareAverage.mul_(Beta2).addcmul_(grad, grad, 1 - Beta2);
            var denominator = (squareAverage.sqrt() / correction2Root).add_(Epsilon);
            parameter.addcdiv_(average, denominator, -learningRate / correction1);
        }
    }

    /// <summary>Releases the moments.</summary>
    public void Dispose()
    {
        foreach (var slot in slots)
        {
            slot.Average.Dispose();
            slot.SquareAverage.Dispose();
        }
    }
}
