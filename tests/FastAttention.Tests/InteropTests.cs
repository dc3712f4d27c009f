using System.Text.RegularExpressions;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Runs docs/interop.md as written: its Python dump, its fastattn commands, its Python read-back.</summary>
[Trait("Category", "Slow")]
public partial class InteropTests
{
    [GeneratedRegex("```(?<kind>python|console)\\n(?<body>.*?)```", RegexOptions.Singleline)]
    private static partial Regex Block();

    [PythonFact]
    public void The_interop_guide_runs_end_to_end()
    {
        Prerequisite.Require(PythonFactAttribute.IsAvailable, PythonFactAttribute.Missing);
        string doc = File.ReadAllText(Path.Combine(Data.RepoRoot, "docs", "interop.md")).ReplaceLineEndings("\n");
        (string Kind, string Body)[] blocks = [.. Block().Matches(doc).Select(m => (m.Groups["kind"].Value, m.Groups["body"].Value))];
        Assert.Equal(["python", "console", "python"], blocks.Select(b => b.Kind));
        string dir = Data.TempDir();

        RunPython(dir, "dump.py", blocks[0].Body);
        foreach (string line in blocks[1].Body.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            Assert.StartsWith("fastattn ", line, StringComparison.Ordinal);
            string[] words = [.. line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..]
                .Select(w => Regex.IsMatch(w, @"\.(npy|npz|safetensors)(:|$)") ? Path.Combine(dir, w) : w)];
            (int code, _, string err) = CliRun.Run(words);
            Assert.True(code == 0, $"'{line}' exited {code}: {err}");
        }

        string output = RunPython(dir, "check.py", blocks[2].Body);
        Assert.Contains("max |fastattn - numpy|", output);
    }

    private static string RunPython(string dir, string name, string code)
    {
        File.WriteAllText(Path.Combine(dir, name), code);
        (int exit, string output) = Processes.Run(PythonFactAttribute.Python, [name], dir, TimeSpan.FromMinutes(2));
        Assert.True(exit == 0, $"{name} failed:\n{output}");
        return output;
    }
}

/// <summary>A fact that needs /usr/bin/python3 with NumPy: skipped where it is missing, failed under CI=true.</summary>
public sealed class PythonFactAttribute : FactAttribute
{
    private static readonly Lazy<bool> Available = new(() =>
    {
        if (!File.Exists(Python))
        {
            return false;
        }

        try
        {
            return Processes.Run(Python, ["-c", "import numpy"], Path.GetTempPath(), TimeSpan.FromMinutes(1)).Code == 0;
        }
        catch (Exception ex) when (ex is System.ComponentModel.Win32Exception or TimeoutException)
        {
            return false;
        }
    });

    public PythonFactAttribute()
    {
        Skip = Prerequisite.SkipReason(IsAvailable, Missing);
    }

    public static string Python => "/usr/bin/python3";

    public static bool IsAvailable => Available.Value;

    public static string Missing => $"{Python} with NumPy is not available (Debian: apt-get install python3-numpy)";
}
