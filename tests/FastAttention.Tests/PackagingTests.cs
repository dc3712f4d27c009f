using System.IO.Compression;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// <c>dotnet pack</c> builds the library package (with XML docs, README, license and symbols) and the CLI as
/// a .NET tool that installs from a local folder and runs.
/// </summary>
[Trait("Category", "Slow")]
public class PackagingTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    [Fact]
    public void Pack_builds_the_library_and_the_tool_and_the_tool_installs_and_runs()
    {
        string dir = Data.TempDir();
        string packages = Path.Combine(dir, "packages");
        foreach (string project in new[] { "src/FastAttention/FastAttention.csproj", "src/FastAttention.Cli/FastAttention.Cli.csproj" })
        {
            // The library packs the binaries this test run was built from; the tool's linux-x64 package is a ReadyToRun
            // publish for that RID, which the test build does not make, so its pack builds it.
            string[] build = project.Contains("Cli", StringComparison.Ordinal) ? [] : ["--no-build"];
            (int code, string output) = Processes.Run("dotnet", ["pack", project, .. build, "-c", Data.Configuration, "-o", packages, "--nologo"], Data.RepoRoot, Limit);
            Assert.True(code == 0, $"dotnet pack {project} failed:\n{output}");
        }

        string version = typeof(ExactAttention).Assembly.GetName().Version!.ToString(3);
        using (ZipArchive library = ZipFile.OpenRead(Path.Combine(packages, $"FastAttention.{version}.nupkg")))
        {
            string[] entries = [.. library.Entries.Select(e => e.FullName)];
            Assert.Contains("lib/net10.0/FastAttention.dll", entries);
            Assert.Contains("lib/net10.0/FastAttention.xml", entries);
            Assert.Contains("README.md", entries);
            string nuspec = new StreamReader(library.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open()).ReadToEnd();
            Assert.Contains("<license type=\"expression\">MIT</license>", nuspec);
            Assert.Contains("<readme>README.md</readme>", nuspec);
            Assert.Contains("System.Numerics.Tensors", nuspec);
        }

        Assert.True(File.Exists(Path.Combine(packages, $"FastAttention.{version}.snupkg")), "no symbol package");
        // The tool is a RID-specific package (linux-x64) whose assemblies are ReadyToRun, so it starts without JIT-compiling
        // its own code, plus the top-level package that points at it.
        using (ZipArchive pointer = ZipFile.OpenRead(Path.Combine(packages, $"FastAttention.Cli.{version}.nupkg")))
        {
            Assert.Contains("tools/any/any/DotnetToolSettings.xml", pointer.Entries.Select(e => e.FullName));
        }

        using (ZipArchive tool = ZipFile.OpenRead(Path.Combine(packages, $"FastAttention.Cli.linux-x64.{version}.nupkg")))
        {
            string[] entries = [.. tool.Entries.Select(e => e.FullName)];
            Assert.Contains("tools/net10.0/linux-x64/DotnetToolSettings.xml", entries);
            foreach (string assembly in new[] { "fastattn.dll", "FastAttention.dll", "FastAttention.Lab.dll", "FastAttention.Training.dll" })
            {
                string entry = "tools/net10.0/linux-x64/" + assembly;
                Assert.Contains(entry, entries);
                Assert.True(IsReadyToRun(tool.GetEntry(entry)!), $"{assembly} in the tool package is IL only, not ReadyToRun");
            }
        }

        string toolPath = Path.Combine(dir, "tools");
        (int installCode, string installOutput) = Processes.Run("dotnet", ["tool", "install", "FastAttention.Cli", "--version", version, "--tool-path", toolPath, "--add-source", packages], dir, Limit);
        Assert.True(installCode == 0, "dotnet tool install failed:\n" + installOutput);
        string fastattn = Path.Combine(toolPath, OperatingSystem.IsWindows() ? "fastattn.exe" : "fastattn");
        (int runCode, string runOutput) = Processes.Run(fastattn, ["--version"], dir, Limit);
        Assert.True(runCode == 0, runOutput);
        Assert.StartsWith(version, runOutput.Trim(), StringComparison.Ordinal);

        // The installed tool computes: inspect the embedded-fixture-free path on a file from the repository.
        (runCode, runOutput) = Processes.Run(fastattn, ["inspect", "--q", Data.Fixture("ocr", "line40", "block2", "q.npy"), "--k", Data.Fixture("ocr", "line40", "block2", "k.npy"), "--no-plan"], dir, Limit);
        Assert.True(runCode == 0, runOutput);
        Assert.Contains("[8, 42, 15]", runOutput);
    }

    /// <summary>Whether an assembly is a ReadyToRun image: its CLR header points at a managed native (R2R) header.</summary>
    private static bool IsReadyToRun(ZipArchiveEntry entry)
    {
        using var bytes = new MemoryStream();
        using (Stream stream = entry.Open())
        {
            stream.CopyTo(bytes);
        }

        bytes.Position = 0;
        using var reader = new System.Reflection.PortableExecutable.PEReader(bytes);
        return reader.PEHeaders.CorHeader is { ManagedNativeHeaderDirectory.Size: > 0 };
    }
}
