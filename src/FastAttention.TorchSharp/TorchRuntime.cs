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
}
