using System.Globalization;
using System.Text.Json;
using FastAttention.Distributed.Tests.Support;
using FastAttention.IO;
using FastAttention.Tests.Support;
using Xunit.Abstractions;

namespace FastAttention.Distributed.Tests;

/// <summary>A fact that needs root and iproute2 (network namespaces): skipped on a developer's machine without them, failed under CI.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute() => Skip = Prerequisite.SkipReason(IsAvailable, Missing);

    public static bool IsAvailable => Environment.UserName == "root" && IpPath is not null;

    public static string Missing => "network namespaces need root and iproute2's ip (Debian: apt-get install iproute2; run as root)";

    public static string? IpPath => new[] { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip" }.FirstOrDefault(File.Exists);
}

/// <summary>
/// Two ranks in two network namespaces joined by a veth pair, so that MPI's messages leave one namespace and enter the other
/// through the veth, as between two machines. mpiexec runs in the first namespace (its local proxy forks rank 0 there); hydra's
/// ssh launcher is replaced by a script that starts the second proxy in the second namespace. Both ends of the veth are called
/// "fav" inside their namespaces so that UCX can be told the one device to use; UCX_TLS=tcp,self keeps it off shared memory,
/// which the namespaces share (/dev/shm) and which would otherwise carry the bytes without touching the veth.
/// </summary>
public class NetworkNamespaceTests(ITestOutputHelper log)
{
    [RootFact]
    public void Attend_across_two_network_namespaces_sends_its_messages_over_the_veth()
    {
        Prerequisite.Require(RootFactAttribute.IsAvailable, RootFactAttribute.Missing);
        string ip = RootFactAttribute.IpPath!;
        string suffix = Guid.NewGuid().ToString("N")[..6];
        int net = int.Parse(suffix[..4], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        string first = $"fa{suffix}a", second = $"fa{suffix}b";
        string prefix = $"10.{200 + (net % 50)}.{(net / 50) % 250}";
        string host0 = prefix + ".1", host1 = prefix + ".2";
        var job = new CliJob();
        job.Write("q.npy", 1, 2, 4, 301, 32);
        job.Write("k.npy", 2, 2, 4, 301, 32);
        job.Write("v.npy", 3, 2, 4, 301, 32);
        string launcher = job["launch.sh"];
        File.WriteAllText(launcher, $$"""
            #!/bin/sh
            # hydra calls: launcher [ssh options] host command...; run the command in the host's namespace, as ssh would.
            while [ "${1#-}" != "$1" ]; do shift; done
            host=$1; shift
            case $host in {{host0}}) ns={{first}};; {{host1}}) ns={{second}};; *) echo "launch.sh: unknown host $host" >&2; exit 1;; esac
            exec {{ip}} netns exec $ns sh -c "$*"
            """.Replace("\r", "", StringComparison.Ordinal));
        if (OperatingSystem.IsLinux())
        {
            File.SetUnixFileMode(launcher, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        try
        {
            Ip(ip, "netns", "add", first);
            Ip(ip, "netns", "add", second);
            Ip(ip, "link", "add", $"v{suffix}a", "type", "veth", "peer", "name", $"v{suffix}b");
            foreach ((string ns, string end, string address) in new[] { (first, $"v{suffix}a", host0), (second, $"v{suffix}b", host1) })
            {
                Ip(ip, "link", "set", end, "netns", ns);
                Ip(ip, "-n", ns, "link", "set", end, "name", "fav");
                Ip(ip, "-n", ns, "addr", "add", address + "/24", "dev", "fav");
                Ip(ip, "-n", ns, "link", "set", "lo", "up");
                Ip(ip, "-n", ns, "link", "set", "fav", "up");
            }

            MpiResult plain = CliJob.Alone("attend", "--q", job["q.npy"], "--k", job["k.npy"], "--v", job["v.npy"], "--out", job["plain.npy"], "--causal");
            Assert.True(plain.ExitCode == 0, plain.ToString());
            (long tx0, long rx0) = (Counter(ip, first, "tx_bytes"), Counter(ip, first, "rx_bytes"));
            string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "/usr/bin/dotnet";
            MpiResult result = MpiJob.Execute(ip,
                ["netns", "exec", first, MpiJob.Launcher, "-launcher", "ssh", "-launcher-exec", launcher, "-hosts", $"{host0},{host1}", "-n", "2", "-ppn", "1",
                 "-genv", "UCX_TLS", "tcp,self", "-genv", "UCX_NET_DEVICES", "fav",
                 dotnet, CliJob.ToolPath, "attend", "--distributed", "--causal", "--json", "--q", job["q.npy"], "--k", job["k.npy"], "--v", job["v.npy"], "--out", job["dist.npy"]],
                CliJob.Deadline);
            long sent = Counter(ip, first, "tx_bytes") - tx0, received = Counter(ip, first, "rx_bytes") - rx0;
            log.WriteLine($"{result.Elapsed.TotalSeconds:0.0} s; veth in {first}: {sent} bytes out, {received} bytes in");
            Assert.True(result.ExitCode == 0, result.ToString());

            using var summary = JsonDocument.Parse(result.Output);
            Assert.Equal(2, summary.RootElement.GetProperty("ranks").GetInt32());
            long messageBytes = summary.RootElement.GetProperty("bytesSent").GetInt64();
            log.WriteLine($"the ranks sent {messageBytes} message bytes");
            Assert.True(messageBytes > 2L * 4 * 150 * 32 * 4, $"only {messageBytes} bytes sent: the ring cannot have passed K and V blocks");
            Assert.True(sent + received >= messageBytes, $"the veth carried {sent} + {received} bytes, fewer than the {messageBytes} the ranks sent: the messages took another path\n{result}");

            TensorData<float> expected = NumpyFile.ReadFloat32(job["plain.npy"]), actual = NumpyFile.ReadFloat32(job["dist.npy"]);
            for (int i = 0; i < expected.Data.Length; i++)
            {
                Assert.True(Math.Abs(actual.Data[i] - expected.Data[i]) <= Tolerance.ExactAtol + (Tolerance.ExactRtol * Math.Abs(expected.Data[i])), $"element {i}");
            }
        }
        finally
        {
            // Deleting a namespace deletes the veth end inside it, and with it the pair.
            foreach (string ns in new[] { first, second })
            {
                MpiJob.Execute(ip, ["netns", "del", ns], TimeSpan.FromSeconds(30));
            }
        }
    }

    private static void Ip(string ip, params string[] arguments)
    {
        MpiResult result = MpiJob.Execute(ip, arguments, TimeSpan.FromSeconds(30));
        Assert.True(result.ExitCode == 0, $"ip {string.Join(' ', arguments)}: {result}");
    }

    private static long Counter(string ip, string ns, string name)
    {
        MpiResult result = MpiJob.Execute(ip, ["netns", "exec", ns, "cat", $"/sys/class/net/fav/statistics/{name}"], TimeSpan.FromSeconds(30));
        Assert.True(result.ExitCode == 0, result.ToString());
        return long.Parse(result.Output.Trim(), CultureInfo.InvariantCulture);
    }
}
