using FastAttention.Tests.Support;
using FastAttention.IO;

namespace FastAttention.Distributed.Tests.Support;

/// <summary>Runs the <c>fastattn</c> tool (built in its own artifacts folder) alone or under mpiexec, on files in a fresh folder.</summary>
internal sealed class CliJob
{
    /// <summary>How long a job may run before MpiJob kills it; every fault must end a job well before.</summary>
    public static readonly TimeSpan Deadline = TimeSpan.FromMinutes(3);

    public CliJob() => Folder = Data.TempDir();

    /// <summary>The folder the inputs and outputs live in.</summary>
    public string Folder { get; }

    /// <summary>fastattn.dll, beside these tests' folder in the artifacts tree (artifacts/bin/FastAttention.Cli/&lt;config&gt;).</summary>
    public static string ToolPath
    {
        get
        {
            string configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Name;
            string path = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "FastAttention.Cli", configuration, "fastattn.dll"));
            return File.Exists(path) ? path : throw new FileNotFoundException("fastattn was not built beside the tests", path);
        }
    }

    /// <summary>The path of <paramref name="name"/> in the folder.</summary>
    public string this[string name] => Path.Combine(Folder, name);

    /// <summary>Writes a seeded normal float32 array and returns its path.</summary>
    public string Write(string name, int seed, params int[] shape)
    {
        float[] data = Data.Normal(shape.Aggregate(1L, (a, x) => a * x), seed);
        NumpyFile.Write(this[name], new TensorData<float>(data, shape));
        return this[name];
    }

    /// <summary>fastattn alone, without mpiexec.</summary>
    public static MpiResult Alone(params string[] arguments) => MpiJob.Execute("dotnet", [ToolPath, .. arguments], Deadline);

    /// <summary>fastattn on <paramref name="ranks"/> processes under mpiexec; <paramref name="more"/> appends mpiexec's ": -n 1 program" parts.</summary>
    public static MpiResult Ranks(int ranks, string[] arguments, params string[] more) => MpiJob.Run(ranks, ["dotnet", ToolPath, .. arguments, .. more], Deadline);

    /// <summary>The names of the files left in the folder (temp files included: they start with a dot).</summary>
    public string[] Files() => [.. Directory.EnumerateFiles(Folder).Select(Path.GetFileName).Order()!];
}
