// Linked into every project that imports build/TorchSharpNative.targets (the projects that reference TorchSharp-cpu).
using System.Runtime.InteropServices;

namespace FastAttention.TorchInterop;

/// <summary>
/// Loads TorchSharp's native shim before the first TorchSharp call. On Linux systems whose libstdc++ lacks
/// GLIBCXX_3.4.32 the build leaves a patched copy, <c>libLibTorchSharp.patched.so</c>, beside
/// <c>libtorch_cpu.so</c> (see build/TorchSharpNative.targets); loading it from that folder makes libtorch load
/// once, from the same files TorchSharp would use (two copies of libtorch in one process abort), and its soname
/// <c>libLibTorchSharp.so</c> makes TorchSharp's own load of the shim resolve to it.
/// </summary>
internal static class TorchSharpNative
{
    /// <summary>The file name of the patched copy the build writes.</summary>
    public const string PatchedFileName = "libLibTorchSharp.patched.so";

    private static readonly Lazy<string> Loaded = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>
    /// Loads libtorch once per process and returns what was loaded. Throws <see cref="InvalidOperationException"/>
    /// with a one-line reason when it cannot be loaded (every later call throws the same).
    /// </summary>
    public static string EnsureLoaded() => Loaded.Value;

    private static string Load()
    {
        string loaded = "TorchSharp's own native search";
        if (OperatingSystem.IsLinux())
        {
            string folder = NativeFolder();
            string patched = Path.Combine(folder, PatchedFileName);
            string path = File.Exists(patched) ? patched : Path.Combine(folder, "libLibTorchSharp.so");
            try
            {
                NativeLibrary.Load(path);
            }
            catch (DllNotFoundException e)
            {
                string hint = path == patched ? "" : "; the build patches a copy when the system libstdc++ lacks GLIBCXX_3.4.32 and g++ and patchelf are installed";
                throw new InvalidOperationException($"libtorch cannot load: {OneLine(e.Message)}{hint}", e);
            }

            loaded = path;
        }

        try
        {
            global::TorchSharp.torch.InitializeDeviceType(global::TorchSharp.DeviceType.CPU);
        }
        catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException)
        {
            throw new InvalidOperationException($"TorchSharp cannot start after loading {loaded}: {OneLine(e.Message)}", e);
        }

        return loaded;
    }

    /// <summary>The folder holding libtorch_cpu.so in this application's output (runtimes/linux-x64/native, or the base folder of a RID-specific build).</summary>
    private static string NativeFolder()
    {
        string baseDir = AppContext.BaseDirectory;
        string[] candidates = [Path.Combine(baseDir, "runtimes", "linux-x64", "native"), baseDir];
        return candidates.FirstOrDefault(dir => File.Exists(Path.Combine(dir, "libtorch_cpu.so")))
            ?? throw new InvalidOperationException($"libtorch cannot load: no libtorch_cpu.so under {baseDir} (runtimes/linux-x64/native): TorchSharp-cpu's natives were not copied to the output");
    }

    private static string OneLine(string message) => string.Join(' ', message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
