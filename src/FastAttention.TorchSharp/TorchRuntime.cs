namespace FastAttention.TorchSharp;

/// <summary>Starting libtorch in applications that use these functions.</summary>
public static class TorchRuntime
{
    /// <summary>
    /// Loads libtorch once per process, before the first TorchSharp call: on Linux systems whose libstdc++ lacks
    /// GLIBCXX_3.4.32 (Debian 12) it loads the patched shim the build leaves beside <c>libtorch_cpu.so</c> in the
    /// application's output (build/TorchSharpNative.targets, which the application project imports). Later calls return at once.
    /// </summary>
    /// <returns>The native library that was loaded.</returns>
    /// <exception cref="InvalidOperationException">libtorch cannot load (a one-line reason).</exception>
    public static string EnsureLoaded() => global::FastAttention.TorchInterop.TorchSharpNative.EnsureLoaded();

    /// <summary>
    /// The worker threads FastAttention's kernels use inside these functions (their options' <c>MaxDegreeOfParallelism</c>);
    /// 0, the default, means all cores. The kernels give the same bits for every thread count; set it beside
    /// <c>torch.set_num_threads</c> to keep a process within a core budget.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative value.</exception>
    public static int KernelThreads
    {
        get => kernelThreads;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            kernelThreads = value;
        }
    }

    private static volatile int kernelThreads;
}
