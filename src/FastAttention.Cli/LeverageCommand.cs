using System.Globalization;
using FastAttention.IO;
using FastAttention.Leverage;

namespace FastAttention.Cli;

/// <summary><c>fastattn leverage</c>: leverage scores / Lewis weights of K and the universal set (or top-k keys).</summary>
internal static class LeverageCommand
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
            new("force", null, "overwrite outputs that exist"),
            new("json", null, "print one JSON object with the certificate (eps, p, size, sizeBound, scoreSum)"),
        ],
        Run);

    private static int Run(ParsedOptions o, TextWriter stdout)
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

        TensorData<float> k = TensorFiles.Load("k", keyPath);
        Progress.Current.Step("computing leverage scores");
        if (k.Rank is not (2 or 3 or 4) || k.ElementCount == 0)
        {
            throw new BadInputException($"--k has shape {k.ShapeText}; expected a non-empty [n, d], [h, n, d] or [b, h, n, d]");
        }

        // Every leading (batch, head) pair is its own key matrix.
        int[] lead = [.. k.Shape.Take(k.Rank - 2)];
        int heads = lead.Aggregate(1, (a, x) => a * x), n = k.Shape[^2], d = k.Shape[^1];
        if (heads > 1 && outPath.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"--out {outPath}: --k has {heads} heads ({k.ShapeText}), one index set each, of different lengths; write an .npz");
        }

        string HeadName(int h) => k.Rank == 4 ? $"batch{h / lead[1]}_head{h % lead[1]}" : $"head{h}";
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
            if (rank < 0)
            {
                rank = (int)Math.Round(bounds.Sum());
            }

            bounds.CopyTo(allScores, (long)h * n);
            if (eps is double e)
            {
                (int[] indices, UniversalSetCertificate certificate) = UniversalSet.FromBounds(bounds, rank, e, p);
                sets.Add([.. indices.Select(x => (long)x)]);
                certificates.Add(certificate);
            }
            else
            {
                sets.Add([.. UniversalSet.Top(bounds, Math.Min(top!.Value, n)).Select(x => (long)x)]);
                certificates.Add(null);
            }
        }

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
                    ? string.Create(inv, $"|U| = {c.Size} keys of {n} with sensitivity bound >= eps = {c.Eps:G3} (p = {c.P:G3}); size bound {c.SizeBound:G4}, score sum {c.ScoreSum:G6}, rank {c.Rank}")
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
