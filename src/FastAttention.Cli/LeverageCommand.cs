using System.Globalization;
using FastAttention.IO;
using FastAttention.Leverage;

namespace FastAttention.Cli;

/// <summary><c>fastattn leverage</c>: leverage scores / Lewis weights of K and the universal set (or top-k keys).</summary>
internal static partial class LeverageCommand
{
    public static Command Command { get; } = new(
        "leverage",
        "leverage scores (or l_p Lewis weights) of K and its universal set U = {j : sigma_j >= eps}, or the top-N keys (LevAttention)",
        [
            new("k", "K.npy", "keys [n, d], [h, n, d] or [b, h, n, d] (required)"),
            new("out", "U.npy", "the kept key indices, int64, sorted (.npy; one set per head in an .npz (head0, ... or batch0_head0, ...) for several heads) (required)"),
            new("eps", "E", "universal set: every key whose sensitivity bound reaches eps (every entry A_ij >= eps of |x|^p attention is kept)"),
            new("top", "N", "instead of --eps: the N keys with the largest scores"),
            new("p", "P", "p of f(x) = |x|^p, in (0, 4) (default 2: leverage scores; otherwise Lewis-weight bounds)"),
            new("method", "M", "p = 2 scores: exact (default, double), fast (float GEMM) or sketched (CountSketch + JL)") { Values = ["exact", "fast", "sketched"] },
            new("stream", null, "one streaming pass with workspace independent of n (p = 2, --eps): online scores, candidates rescored at the end"),
            new("scores", "S.npy", "also write every key's score (float64 [n] or [h, n])"),
            new("threads", "T", "worker threads (default: all cores)"),
            new("distributed", null, "as one rank of an MPI job (mpiexec -n P fastattn leverage --distributed ...; without mpiexec, one process): each rank reads its contiguous rows of the .npy keys; the Gram matrix is summed over ranks; exact scores only"),
            new("force", null, "overwrite outputs that exist"),
            new("json", null, "print one JSON object with the certificate (eps, p, size, sizeBound, scoreSum)"),
        ],
        Run);

    /// <summary>The options of one run, checked (outputs included) before any file is read.</summary>
    private sealed record Settings(string OutPath, string? ScoresPath, bool Force, double? Eps, int? Top, double P, LeverageMethod Method, bool Stream, int Threads, string KeyPath);

    private static Settings Parse(ParsedOptions o)
    {
        string outPath = o.Required("leverage", "out");
        string? scoresPath = o.Get("scores");
        bool force = o.Flag("force");
        double? eps = o.Double("eps", positive: true);
        int? top = o.Int("top", 1, int.MaxValue);
        if (eps.HasValue == top.HasValue)
        {
            throw new UsageException("leverage: give exactly one of --eps E and --top N");
        }

        if (eps is > 1)
        {
            throw new UsageException($"leverage: --eps must lie in (0, 1]; got {eps}");
        }

        double p = o.Double("p") ?? 2;
        if (!(p > 0 && p < 4))
        {
            throw new UsageException($"leverage: --p must lie in (0, 4) (p <= 0 is no attention; beyond 4 the Lewis-weight iteration may not converge); got {p}");
        }

        string methodName = o.Get("method") ?? "exact";
        LeverageMethod method = methodName switch
        {
            "exact" => LeverageMethod.Exact,
            "fast" => LeverageMethod.Fast,
            "sketched" => LeverageMethod.Sketched,
            _ => throw new UsageException($"leverage: unknown --method '{methodName}' (exact, fast, sketched)"),
        };
        bool stream = o.Flag("stream");
        if (stream && (p != 2 || eps is null || method != LeverageMethod.Exact))
        {
            throw new UsageException("leverage: --stream computes p = 2 leverage scores for a threshold: use it with --eps and without --p/--method");
        }

        if (method != LeverageMethod.Exact && p != 2)
        {
            throw new UsageException("leverage: --method fast|sketched computes p = 2 leverage scores; drop --p");
        }

        int threads = o.Threads() ?? 0;
        string keyPath = o.Required("leverage", "k");

        // Every option checked: now the outputs, before any file is read.
        TensorFiles.CheckTensorOutput(o, "out", ".npy", ".npz");
        if (scoresPath is not null)
        {
            TensorFiles.CheckTensorOutput(o, "scores", ".npy");
        }

        return new Settings(outPath, scoresPath, force, eps, top, p, method, stream, threads, keyPath);
    }

    private static int Run(ParsedOptions o, TextWriter stdout)
    {
        if (o.Flag("distributed"))
        {
            return RunDistributed(o, stdout);
        }

        Settings settings = Parse(o);
        (string outPath, string? scoresPath, _, double? eps, int? top, double p, LeverageMethod method, bool stream, int threads, string keyPath) = settings;
        TensorData<float> k = TensorFiles.Load("k", keyPath);
        Progress.Current.Step("computing leverage scores");
        (int[] lead, int heads, int n, int d) = KeyShape(k.Shape, outPath);
        var sets = new List<long[]>();
        var certificates = new List<UniversalSetCertificate?>();
        var allScores = new double[(long)heads * n];
        for (int h = 0; h < heads; h++)
        {
            ReadOnlySpan<float> keys = k.Data.AsSpan(h * n * d, n * d);
            if (stream)
            {
                var leverage = new LeverageStream(d, eps!.Value);
                for (int start = 0; start < n; start += 65536)
                {
                    Progress.Current.Step($"streaming keys {start:N0} of {n:N0}", (double)start / n);
                    leverage.Append(keys.Slice(start * d, Math.Min(65536, n - start) * d));
                }

                (long[] indices, double[] kept, UniversalSetCertificate certificate) = leverage.Finish();
                sets.Add(indices);
                certificates.Add(certificate);
                for (int x = 0; x < indices.Length; x++)
                {
                    allScores[((long)h * n) + indices[x]] = kept[x]; // only the kept keys' final scores are known in one pass
                }

                continue;
            }

            (double[] bounds, int rank) = p == 2 && method != LeverageMethod.Exact
                ? (LeverageScores.Compute(keys, d, method, maxDegreeOfParallelism: threads), -1)
                : UniversalSet.SensitivityBounds(keys, d, p, threads);
            bounds.CopyTo(allScores, (long)h * n);
            Select(bounds, rank, settings, sets, certificates);
        }

        return Finish(o, stdout, settings, k.Shape, sets, certificates, allScores);
    }

    /// <summary>
    /// Checks a key shape [n, d], [h, n, d] or [b, h, n, d] (non-empty) against the output (one index set per head needs an .npz);
    /// returns the leading dimensions, their product (heads), n and d.
    /// </summary>
    private static (int[] Lead, int Heads, int N, int D) KeyShape(IReadOnlyList<int> shape, string outPath)
    {
        string text = TensorData.FormatShape(shape);
        if (shape.Count is not (2 or 3 or 4) || shape.Any(x => x == 0))
        {
            throw new BadInputException($"--k has shape {text}; expected a non-empty [n, d], [h, n, d] or [b, h, n, d]");
        }

        // Every leading (batch, head) pair is its own key matrix.
        int[] lead = [.. shape.Take(shape.Count - 2)];
        int heads = lead.Aggregate(1, (a, x) => a * x);
        if (heads > 1 && outPath.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"--out {outPath}: --k has {heads} heads ({text}), one index set each, of different lengths; write an .npz");
        }

        return (lead, heads, shape[^2], shape[^1]);
    }

    /// <summary>One head's kept keys from its n sensitivity bounds (rank -1: estimate it as their sum): the universal set, or the top N.</summary>
    private static void Select(double[] bounds, int rank, Settings settings, List<long[]> sets, List<UniversalSetCertificate?> certificates)
    {
        if (rank < 0)
        {
            rank = (int)Math.Round(bounds.Sum());
        }

        if (settings.Eps is double e)
        {
            (int[] indices, UniversalSetCertificate certificate) = UniversalSet.FromBounds(bounds, rank, e, settings.P);
            sets.Add([.. indices.Select(x => (long)x)]);
            certificates.Add(certificate);
        }
        else
        {
            sets.Add([.. UniversalSet.Top(bounds, Math.Min(settings.Top!.Value, bounds.Length)).Select(x => (long)x)]);
            certificates.Add(null);
        }
    }

    /// <summary>Writes the kept keys (and the scores) and prints the summary.</summary>
    private static int Finish(ParsedOptions o, TextWriter stdout, Settings settings, IReadOnlyList<int> shape, List<long[]> sets, List<UniversalSetCertificate?> certificates,
        double[] allScores, Action<System.Text.Json.Utf8JsonWriter>? moreJson = null)
    {
        (string outPath, string? scoresPath, bool force, double? eps, _, _, _, bool stream, _, _) = settings;
        (int[] lead, int heads, int n, int d) = KeyShape(shape, outPath);
        string HeadName(int h) => shape.Count == 4 ? $"batch{h / lead[1]}_head{h % lead[1]}" : $"head{h}";
        TensorFiles.WriteAtomically(outPath, force, temp =>
        {
            if (outPath.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
            {
                NumpyFile.Write(temp, new TensorData<long>(sets[0], sets[0].Length));
            }
            else
            {
                NpzFile.Write(temp, [.. sets.Select((set, h) => new KeyValuePair<string, TensorData>(HeadName(h), new TensorData<long>(set, set.Length)))]);
            }
        });
        if (scoresPath is not null)
        {
            TensorFiles.WriteAtomically(scoresPath, force, temp => NumpyFile.Write(temp, new TensorData<double>(allScores, [.. lead, n])));
        }

        var inv = CultureInfo.InvariantCulture;
        if (o.Flag("json"))
        {
            Json.Write(stdout, w =>
            {
                w.WriteNumber("heads", heads);
                w.WriteNumber("n", n);
                w.WriteNumber("d", d);
                w.WriteString("mode", eps is null ? "top" : stream ? "stream" : "threshold");
                w.WriteString("out", outPath);
                w.WriteStartArray("sizes");
                foreach (long[] set in sets)
                {
                    w.WriteNumberValue(set.Length);
                }

                w.WriteEndArray();
                moreJson?.Invoke(w);
                if (certificates[0] is UniversalSetCertificate c)
                {
                    WriteCertificate(w, "certificate", c);
                    w.WriteStartArray("certificates");
                    foreach (UniversalSetCertificate? each in certificates)
                    {
                        w.WriteStartObject();
                        WriteFields(w, each!);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                }
            });
        }
        else
        {
            for (int h = 0; h < heads; h++)
            {
                string what = certificates[h] is UniversalSetCertificate c
                    ? string.Create(inv, $"|U| = {c.Size} keys of {n} with sensitivity bound >= eps = {NumberText.Format(c.Eps)} (p = {NumberText.Format(c.P)}); size bound {NumberText.Format(c.SizeBound, 4)}, score sum {NumberText.Format(c.ScoreSum, 6)}, rank {c.Rank}")
                    : string.Create(inv, $"top {sets[h].Length} keys of {n} by score");
                stdout.WriteLine((heads > 1 ? $"{HeadName(h)}: " : string.Empty) + what);
            }

            stdout.WriteLine($"wrote {outPath}" + (scoresPath is null ? string.Empty : $" and {scoresPath}"));
        }

        return ExitCode.Ok;
    }

    private static void WriteCertificate(System.Text.Json.Utf8JsonWriter w, string name, UniversalSetCertificate c)
    {
        w.WriteStartObject(name);
        WriteFields(w, c);
        w.WriteEndObject();
    }

    private static void WriteFields(System.Text.Json.Utf8JsonWriter w, UniversalSetCertificate c)
    {
        w.WriteNumber("eps", c.Eps);
        w.WriteNumber("p", c.P);
        w.WriteNumber("size", c.Size);
        w.WriteNumber("sizeBound", c.SizeBound);
        w.WriteNumber("scoreSum", c.ScoreSum);
        w.WriteNumber("rank", c.Rank);
    }
}
