using System.Globalization;

namespace FastAttention.Cli;

/// <summary>Exit codes: documented in the README and the help text.</summary>
internal static class ExitCode
{
    public const int Ok = 0;
    public const int Failure = 1;
    public const int Usage = 2;
    public const int BadInput = 3;
    public const int Cancelled = 130;
}

/// <summary>A command-line mistake: printed as one line, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>A problem with the user's data (shapes, values): printed as one line, exit code 3.</summary>
internal sealed class BadInputException(string message) : Exception(message);

/// <summary>One option a command accepts.</summary>
internal sealed record OptionSpec(string Name, string? ValueName, string Help)
{
    public bool IsFlag => ValueName is null;
}

/// <summary>The parsed options of one command: <c>--name value</c>, <c>--name=value</c> and <c>--flag</c>.</summary>
internal sealed class ParsedOptions
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    private ParsedOptions()
    {
    }

    /// <summary>Parses options; a command with a <paramref name="positional"/> slot takes one bare word as that option's value.</summary>
    public static ParsedOptions Parse(string command, IReadOnlyList<string> args, IReadOnlyList<OptionSpec> specs, string? positional = null)
    {
        var parsed = new ParsedOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string token = args[i];
            if (positional is not null && !token.StartsWith('-') && parsed._values.TryAdd(positional, token))
            {
                continue;
            }

            if (!token.StartsWith("--", StringComparison.Ordinal) || token.Length == 2)
            {
                throw new UsageException($"{command}: unexpected argument '{token}' (options start with --; see 'fastattn {command} --help')");
            }

            string name = token[2..];
            string? inline = null;
            int equals = name.IndexOf('=', StringComparison.Ordinal);
            if (equals >= 0)
            {
                inline = name[(equals + 1)..];
                name = name[..equals];
            }

            OptionSpec spec = specs.FirstOrDefault(s => s.Name == name)
                ?? throw new UsageException($"{command}: unknown option --{name} (known: {string.Join(", ", specs.Select(s => "--" + s.Name))})");
            if (spec.IsFlag)
            {
                if (inline is not null)
                {
                    throw new UsageException($"{command}: --{name} is a flag and takes no value");
                }

                parsed._flags.Add(name);
                continue;
            }

            string? value = inline;
            if (value is null)
            {
                if (i + 1 >= args.Count)
                {
                    throw new UsageException($"{command}: --{name} needs a value ({spec.ValueName})");
                }

                value = args[++i];
            }

            if (!parsed._values.TryAdd(name, value))
            {
                throw new UsageException($"{command}: --{name} is given twice");
            }
        }

        return parsed;
    }

    public bool Flag(string name) => _flags.Contains(name);

    /// <summary>
    /// A usage error for an option given with a method it does not apply to, which would otherwise be ignored
    /// without a word. <paramref name="table"/> lists the options that belong to some methods only, and those methods.
    /// </summary>
    public void RejectOptionsOfOtherMethods(string command, string method, IEnumerable<(string Option, string[] Methods)> table)
    {
        foreach ((string option, string[] methods) in table)
        {
            if ((_values.ContainsKey(option) || _flags.Contains(option)) && !methods.Contains(method))
            {
                throw new UsageException($"{command}: --{option} applies to --method {string.Join(" or ", methods)}, not {method}");
            }
        }
    }

    public string? Get(string name) => _values.TryGetValue(name, out string? v) ? v : null;

    public string Required(string command, string name) =>
        Get(name) ?? throw new UsageException($"{command}: --{name} is required (see 'fastattn {command} --help')");

    public float? Float(string name, bool positive = false) => Double(name, positive) is double value ? (float)value : null;

    /// <summary>The option as a double, parsed at full precision (a target error of 1e-6 stays 1e-6).</summary>
    public double? Double(string name, bool positive = false)
    {
        string? text = Get(name);
        if (text is null)
        {
            return null;
        }

        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !float.IsFinite((float)value) || (positive && (float)value <= 0))
        {
            throw new UsageException($"--{name} must be a finite {(positive ? "positive " : string.Empty)}number, got '{text}'");
        }

        return value;
    }

    public int? Int(string name, int min, int max)
    {
        string? text = Get(name);
        if (text is null)
        {
            return null;
        }

        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) || value < min || value > max)
        {
            throw new UsageException($"--{name} must be an integer from {min} to {max}, got '{text}'");
        }

        return value;
    }
}
