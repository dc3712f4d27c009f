using System.Globalization;

namespace FastAttention.Benchmarks;

/// <summary>
/// The error column of the storage-type tables: each type's output (the public typed call) against float64 attention on the
/// original float32 keys and values, as the largest |error| over max |V|, beside the bound the call states (also over max |V|).
/// </summary>
public static class KvErrorTable
{
    public static void Print(float[] q, float[] k, float[] v, AttentionShape shape, bool causal)
    {
        var reference = new double[shape.OutputLength];
        ReferenceAttention.Compute(q, k, v, shape, reference, causal: causal);
        double maxV = v.Max(Math.Abs);
        Console.WriteLine($"errors against float64 on the float32 originals ({shape}, causal {causal}), over max|V| = {maxV:G4}:");
        Console.WriteLine($"{"type",-5} {"max |error| / max|V|",22} {"stated bound / max|V|",22} {"bound / error",14}");
        foreach (KvElementType type in Enum.GetValues<KvElementType>())
        {
            KvTensor key = KvTensor.Encode(k, shape.HeadDim, type), value = KvTensor.Encode(v, shape.ValueDim, type);
            var output = new float[shape.OutputLength];
            AttentionRun run = ExactAttention.Compute(q, key, value, shape, output, new ExactAttentionOptions { Causal = causal });
            double worst = 0;
            for (long x = 0; x < output.Length; x++)
            {
                worst = Math.Max(worst, Math.Abs(output[x] - reference[x]));
            }

            double bound = run.KvBound!.Absolute;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{KvElementTypes.Name(type),-5} {worst / maxV,22:G3} {bound / maxV,22:G3} {(worst > 0 ? bound / worst : double.NaN),14:G3}"));
        }
    }
}
