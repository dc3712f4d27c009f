using FastAttention.Kernels;

namespace FastAttention.Tests.Support;

/// <summary>The registry's kernels that this CPU runs and that take a given input shape.</summary>
internal static class KernelsFor
{
    public static IEnumerable<AttentionKernel> Shape(int queryCount, int keyCount = 1)
    {
        return KernelRegistry.For(new AttentionShape(1, 1, queryCount, keyCount, 1, 1));
    }

    public static TheoryData<string> Names(int queryCount)
    {
        var data = new TheoryData<string>();
        foreach (AttentionKernel kernel in Shape(queryCount))
        {
            data.Add(kernel.Name);
        }

        return data;
    }
}
