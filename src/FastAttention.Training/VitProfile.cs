using System.Diagnostics;
using FastAttention.TorchSharp;
using static TorchSharp.torch;

namespace FastAttention.Training;

/// <summary>Timings of a ViT's parts, for the share of a training step spent in attention.</summary>
public static class VitProfile
{
    /// <summary>
    /// The median time of one attention forward plus backward at a ViT block's shape (<c>[batch, heads, tokens, dim / heads]</c>,
    /// random unit-variance q, k, v; the gradient of the sum of the output times a fixed random tensor).
    /// </summary>
    /// <param name="attention">The attention.</param>
    /// <param name="config">The model whose block shape is timed.</param>
    /// <param name="batch">Images per step.</param>
    /// <param name="repeats">Timed repetitions (after one warm-up).</param>
    /// <returns>Seconds per forward and backward.</returns>
    public static double AttentionSeconds(AttentionChoice attention, VitConfig config, int batch, int repeats)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(repeats, 1);
        config.Validate();
        TorchRuntime.EnsureLoaded();
        using var scope = NewDisposeScope();
        using var generator = new Generator(12345);
        long[] shape = [batch, config.Heads, config.Tokens, config.Dim / config.Heads];
        var q = randn(shape, generator: generator).requires_grad_();
        var k = randn(shape, generator: generator).requires_grad_();
        var v = randn(shape, generator: generator).requires_grad_();
        var weight = randn(shape, generator: generator);
        using var module = attention.Create(0, 0);
        var times = new List<double>();
        for (int r = 0; r <= repeats; r++)
        {
            using var inner = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            (module.forward(q, k, v) * weight).sum().backward();
            clock.Stop();
            if (r > 0)
            {
                times.Add(clock.Elapsed.TotalSeconds);
            }

            q.grad?.zero_();
            k.grad?.zero_();
            v.grad?.zero_();
        }

        times.Sort();
        return times[times.Count / 2];
    }
}
