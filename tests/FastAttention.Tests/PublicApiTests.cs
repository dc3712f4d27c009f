using System.Reflection;
using System.Text;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// Keeps the public surface deliberate: a reflection dump of the library's public API must equal the
/// committed <c>PublicApi.txt</c>. After an intended change, regenerate it with
/// <c>UPDATE_API_SNAPSHOT=1 dotnet test -c Release --filter PublicApi</c>: that run rewrites the file and
/// still fails, showing what changed; review the diff, commit the file, and the next run passes.
/// </summary>
public class PublicApiTests
{
    private static string Dump(Assembly library)
    {
        var text = new StringBuilder();
        foreach (Type type in library.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            string kind = type.IsEnum ? "enum" : type.IsInterface ? "interface" : type.IsValueType ? "struct" : type.IsAbstract && type.IsSealed ? "static class" : "class";
            text.Append(kind).Append(' ').AppendLine(type.FullName);
            IEnumerable<string> members = type
                .GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                .Where(m => m is not MethodInfo { IsSpecialName: true })
                .Select(m => "    " + m.MemberType + " " + m)
                .OrderBy(s => s, StringComparer.Ordinal);
            foreach (string member in members)
            {
                text.AppendLine(member);
            }
        }

        return text.ToString().ReplaceLineEndings("\n");
    }

    /// <summary>Each public assembly and its snapshot: the core, the two TorchSharp satellites and the MPI one (their public surface is a package's too).</summary>
    public static TheoryData<string> Assemblies() => ["FastAttention", "FastAttention.TorchSharp", "FastAttention.Training", "FastAttention.Distributed"];

    [Theory]
    [MemberData(nameof(Assemblies))]
    public void Public_api_matches_the_committed_snapshot(string assembly)
    {
        string file = assembly == "FastAttention" ? "PublicApi.txt" : $"PublicApi.{assembly["FastAttention.".Length..]}.txt";
        string path = Path.Combine(Data.RepoRoot, "tests", "FastAttention.Tests", file);
        Assembly library = assembly switch
        {
            "FastAttention" => typeof(ExactAttention).Assembly,
            "FastAttention.TorchSharp" => typeof(FastAttention.TorchSharp.FastAttentionFunctions).Assembly,
            "FastAttention.Distributed" => typeof(FastAttention.Distributed.Communicator).Assembly,
            _ => typeof(FastAttention.Training.VitTrainer).Assembly,
        };
        string actual = Dump(library);

        // Read the committed snapshot before update mode may overwrite it, so the comparison is always
        // between the reflection dump and what was committed, never between the file and itself.
        string? committed = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : null;
        bool update = Environment.GetEnvironmentVariable("UPDATE_API_SNAPSHOT") == "1";
        if (update && committed != actual)
        {
            File.WriteAllText(path, actual);
        }

        if (committed == actual)
        {
            return;
        }

        string next = update
            ? $"{path} has been rewritten from the reflection dump: review `git diff` and commit it; the next run passes."
            : "If intended: UPDATE_API_SNAPSHOT=1 dotnet test -c Release --filter PublicApi, then review `git diff` and commit the file.";
        Assert.Fail(committed is null ? $"{path} is missing. {next}" : $"The public API differs from {path}.\n{Difference(committed, actual)}\n{next}");
    }

    /// <summary>The lines the dump has more often than the snapshot (added) and the other way round (removed),
    /// counting repeats, since overloads can print alike; or, when the counts agree, that the order differs.</summary>
    private static string Difference(string committed, string actual)
    {
        Dictionary<string, int> count = [];
        foreach (string line in actual.Split('\n'))
        {
            count[line] = count.GetValueOrDefault(line) + 1;
        }

        foreach (string line in committed.Split('\n'))
        {
            count[line] = count.GetValueOrDefault(line) - 1;
        }

        string[] added = [.. count.Where(c => c.Value > 0).SelectMany(c => Enumerable.Repeat(c.Key, c.Value))];
        string[] removed = [.. count.Where(c => c.Value < 0).SelectMany(c => Enumerable.Repeat(c.Key, -c.Value))];
        if (added.Length == 0 && removed.Length == 0)
        {
            return "The same lines in a different order.";
        }

        return $"Added ({added.Length}):\n{string.Join("\n", added.Take(20))}\nRemoved ({removed.Length}):\n{string.Join("\n", removed.Take(20))}";
    }
}
