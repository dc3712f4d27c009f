using System.Reflection;
using System.Text;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>
/// Keeps the public surface deliberate: a reflection dump of the library's public API must equal the
/// committed <c>PublicApi.txt</c>. After an intended change, regenerate it with
/// <c>UPDATE_API_SNAPSHOT=1 dotnet test -c Release --filter PublicApi</c> and review the diff.
/// </summary>
public class PublicApiTests
{
    private static string Dump()
    {
        var text = new StringBuilder();
        Assembly library = typeof(ExactAttention).Assembly;
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

    [Fact]
    public void Public_api_matches_the_committed_snapshot()
    {
        string path = Path.Combine(Data.RepoRoot, "tests", "FastAttention.Tests", "PublicApi.txt");
        string actual = Dump();
        if (Environment.GetEnvironmentVariable("UPDATE_API_SNAPSHOT") == "1")
        {
            File.WriteAllText(path, actual);
        }

        string expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : "(missing)";
        if (expected != actual)
        {
            string[] e = expected.Split('\n'), a = actual.Split('\n');
            string added = string.Join("\n", a.Except(e).Take(10));
            string removed = string.Join("\n", e.Except(a).Take(10));
            Assert.Fail($"The public API changed. Added:\n{added}\nRemoved:\n{removed}\nIf intended: UPDATE_API_SNAPSHOT=1 dotnet test -c Release --filter PublicApi");
        }
    }
}
