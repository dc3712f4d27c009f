using FastAttention.IO;
using SharpFuzz;

namespace FastAttention.Fuzz;

/// <summary>
/// One reader per run, given AFL++'s input: the documented error (<see cref="TensorFileException"/>) is the expected
/// answer to a bad file; any other exception, or an allocation larger than the input can justify, is a finding and
/// ends the process as a crash.
/// </summary>
internal static class Program
{
    /// <summary>
    /// A parse may allocate what the file holds a few times over (bytes read, the tensors, names), plus a fixed
    /// amount; a header that makes the reader allocate from a claimed size before checking the file length goes past it.
    /// An .npz member may be deflated: what it holds is then its declared uncompressed size (up to 1000x the bytes on
    /// disk), which is allowed a few times over too (<see cref="DeclaredNpzBytes"/>).
    /// </summary>
    private const long FixedAllowance = 4 << 20, PerInputByte = 64, PerDeclaredByte = 4;

    public static int Main(string[] args)
    {
        string target = args.Length == 1 ? args[0] : "";
        Action<string> read = target switch
        {
            "npy" => path => NumpyFile.Read(path),
            "npz" => path => NpzFile.ReadAll(path),
            "safetensors" => path => { SafeTensorsFile.Metadata(path); SafeTensorsFile.ReadAll(path); },
            _ => null!,
        };
        if (read is null)
        {
            Console.Error.WriteLine("usage: FastAttention.Fuzz npy|npz|safetensors (input from AFL++ on stdin)");
            return 2;
        }

        string path = Path.Combine(Path.GetTempPath(), $"fastattn-fuzz-{Environment.ProcessId}.{target}");
        try
        {
            Fuzzer.OutOfProcess.Run(stream =>
            {
                long length;
                using (var file = File.Create(path))
                {
                    stream.CopyTo(file);
                    length = file.Length;
                }

                long declared = target == "npz" ? DeclaredNpzBytes(path) : 0;
                long before = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    read(path);
                }
                catch (TensorFileException)
                {
                    // The documented answer to a bad file.
                }

                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                if (allocated > FixedAllowance + (PerInputByte * length) + (PerDeclaredByte * declared))
                {
                    File.Delete(path);
                    Environment.FailFast($"{target}: reading a {length}-byte input ({declared} bytes declared uncompressed) allocated {allocated} bytes");
                }
            });
        }
        finally
        {
            File.Delete(path);
        }

        return 0;
    }

    /// <summary>The uncompressed sizes an .npz's zip directory declares for its members, capped at 1000x each member's
    /// compressed size (deflate's limit); 0 when the directory cannot be read (the reader must then refuse the file).</summary>
    private static long DeclaredNpzBytes(string path)
    {
        try
        {
            using var zip = System.IO.Compression.ZipFile.OpenRead(path);
            return zip.Entries.Sum(e => Math.Min(Math.Max(e.Length, 0), 1032L * Math.Max(e.CompressedLength, 0)));
        }
        catch (Exception ex) when (ex is InvalidDataException or IOException or NotSupportedException or ArgumentException)
        {
            return 0;
        }
    }
}
