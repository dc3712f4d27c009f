using static TorchSharp.torch;

namespace FastAttention.Torch.Tests.Support;

/// <summary>libtorch's float64 forward of one case, carrying the autograd graph back to the leaves.</summary>
/// <param name="Output">O, [b, h, nq, dv].</param>
/// <param name="LogSumExp">Log-sum-exp (softmax) or ln Z (power) per row, [b, h, nq].</param>
/// <param name="Weights">The normalised attention weights P, [b, h, nq, nk].</param>
/// <param name="LogitSlope">|d logit / d (q.k)| per pair, [b, h, nq, nk]: the scale s for softmax, p / |q.k| for power.</param>
/// <param name="Shape">The case's dimensions.</param>
internal sealed record TorchForward(Tensor Output, Tensor LogSumExp, Tensor Weights, Tensor LogitSlope, AttentionShape Shape)
{
    /// <summary>
    /// Autograd of sum(O * dO): dQ, dK, dV, each with the magnitude of the terms a float32 backward sums to make it.
    /// With dP = dO V^T and D = rowsum(dO o O), the backward forms G_ij = P_ij (dP_ij - D_i) slope_ij and then
    /// dQ_i = sum_j G_ij k_j, dK_j = sum_i G_ij q_i (over the kv head's query heads), dV_j = sum_i P_ij dO_i. The
    /// magnitudes replace each factor by its absolute value and dP - D by |dP| + |D|: where dP and D cancel (power
    /// attention with d = 1 and two keys has dQ = 0 in exact arithmetic, from terms of size p |dO.v| / |q.k|) float32
    /// cannot be expected to do better than a few units of rounding of that magnitude, however small the result.
    /// </summary>
    public TorchGradients Gradients(float[] outputGradient, (Tensor Q, Tensor K, Tensor V) leaves)
    {
        var dO = TorchReference.Constant(outputGradient, Output.shape);
        (Output * dO).sum().backward();

        var s = Shape;
        var p = Weights.detach();
        var dP = matmul(dO, TorchReference.Heads(leaves.V, s).detach().transpose(-2, -1));
        var d = (dO * Output.detach()).sum(-1, keepdim: true);
        var g = p * (dP.abs() + d.abs()) * LogitSlope;
        int group = s.HeadCount / s.EffectiveKeyValueHeads;
        Tensor PerKvHead(Tensor t) => t.reshape(s.BatchSize, s.EffectiveKeyValueHeads, group, s.KeyCount, t.shape[^1]).sum(2);
        var queryMagnitude = matmul(g, TorchReference.Heads(leaves.K, s).detach().abs());
        var keyMagnitude = PerKvHead(matmul(g.transpose(-2, -1), leaves.Q.detach().abs()));
        var valueMagnitude = PerKvHead(matmul(p.transpose(-2, -1), dO.abs()));
        return new TorchGradients(
            TorchReference.Values(leaves.Q.grad!), TorchReference.Values(leaves.K.grad!), TorchReference.Values(leaves.V.grad!),
            TorchReference.Values(queryMagnitude), TorchReference.Values(keyMagnitude), TorchReference.Values(valueMagnitude));
    }
}

/// <summary>libtorch's dQ, dK, dV and the magnitudes of the terms each sums (see <see cref="TorchForward.Gradients"/>).</summary>
internal sealed record TorchGradients(double[] Query, double[] Key, double[] Value, double[] QueryMagnitude, double[] KeyMagnitude, double[] ValueMagnitude);
