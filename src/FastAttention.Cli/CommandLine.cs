using System.CommandLine;
using System.CommandLine.Parsing;
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

    /// <summary>The only values the option takes, when it has a fixed list (help shows them; another value is a usage error naming them).</summary>
    public IReadOnlyList<string>? Values { get; init; }

    /// <summary>Other spellings of the option (without dashes), e.g. <c>p</c> for <c>power</c>.</summary>
    public IReadOnlyList<string> Aliases { get; init; } = [];
}

/// <summary>
/// The command line's grammar, built with System.CommandLine from the <see cref="Command"/> records: one subcommand
/// each, an option per <see cref="OptionSpec"/> (flags take no value), and the positional word where a command has one.
/// Response files and POSIX bundling are off: every token means what it says.
/// </summary>
internal sealed class CommandLineSyntax
{
    private readonly RootCommand _root;
    private readonly Dictionary<System.CommandLine.Command, (Command Spec, Dictionary<string, Option> Options, Argument<string>? Positional)> _commands = [];
    private readonly ParserConfiguration _configuration = new() { ResponseFileTokenReplacer = null, EnablePosixBundling = false };

    private CommandLineSyntax(IReadOnlyList<Command> commands)
    {
        _root = new RootCommand("fastattn: fast exact and approximate transformer attention on the CPU");
        foreach (Command spec in commands)
        {
            var command = new System.CommandLine.Command(spec.Name, spec.Summary);
            var options = new Dictionary<string, Option>(StringComparer.Ordinal);
            Argument<string>? positional = null;
            if (spec.Positional is string slot)
            {
                OptionSpec? described = spec.Options.FirstOrDefault(o => o.Name == slot);
                positional = new Argument<string>(slot) { Arity = ArgumentArity.ZeroOrOne, Description = described?.Help };
                command.Add(positional);
            }

            foreach (OptionSpec option in spec.Options)
            {
                Option symbol = option.IsFlag
                    ? new Option<bool>("--" + option.Name) { Description = option.Help, Arity = ArgumentArity.Zero }
                    : new Option<string>("--" + option.Name) { Description = option.Help, HelpName = option.Values is null ? option.ValueName : string.Join('|', option.Values) };
                if (option.Values is not null)
                {
                    ((Option<string>)symbol).AcceptOnlyFromAmong([.. option.Values]);
                }

                foreach (string alias in option.Aliases)
                {
                    symbol.Aliases.Add("--" + alias);
                }

                command.Add(symbol);
                options[option.Name] = symbol;
            }

            _root.Add(command);
            _commands[command] = (spec, options, positional);
        }
    }

    /// <summary>The grammar of these commands.</summary>
    public static CommandLineSyntax Build(IReadOnlyList<Command> commands) => new(commands);

    /// <summary>Parses one command line (no work is done: the caller checks <see cref="ParseResult.Errors"/>).</summary>
    public ParseResult Parse(IReadOnlyList<string> args) => _root.Parse(args, _configuration);

    /// <summary>Whether the line is <c>fastattn --version</c>.</summary>
    public bool AsksForVersion(ParseResult parse) =>
        parse.CommandResult.Command == _root && _root.Options.OfType<VersionOption>().Any(v => parse.GetResult(v) is not null);

    /// <summary>The command a parse without errors names.</summary>
    public Command CommandOf(ParseResult parse) =>
        _commands.TryGetValue(parse.CommandResult.Command, out var entry) ? entry.Spec : throw new UsageException("a command is required (see 'fastattn --help')");

    /// <summary>The first error as one line, naming the command, with System.CommandLine's typo correction when it has one.</summary>
    public string DescribeError(ParseResult parse)
    {
        string where = _commands.TryGetValue(parse.CommandResult.Command, out var entry) ? entry.Spec.Name + ": " : string.Empty;
        // An unrecognised token says more than the "required command" error System.CommandLine adds beside it.
        ParseError first = parse.Errors.FirstOrDefault(e => e.Message.StartsWith("Unrecognized", StringComparison.Ordinal)) ?? parse.Errors[0];
        // One line: the list of allowed values comes one a line.
        string message = string.Join(' ', first.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            .Replace("' '", "', '", StringComparison.Ordinal).TrimEnd('.');

        // A value outside an option's list ("Argument 'f64' not recognized") says which option it was given to.
        string? option = first.SymbolResult switch
        {
            System.CommandLine.Parsing.OptionResult r => r.Option.Name,
            System.CommandLine.Parsing.ArgumentResult { Parent: System.CommandLine.Parsing.OptionResult r } => r.Option.Name,
            _ => null,
        };
        if (option is not null && !message.Contains(option, StringComparison.Ordinal))
        {
            message = $"{option}: {message}";
        }

        // The library's typo correction, captured instead of printed (it would add lines, and the help text).
        string suggestion = string.Empty;
        if (parse.Action is System.CommandLine.Invocation.ParseErrorAction errorAction)
        {
            errorAction.ShowHelp = false;
            errorAction.ShowTypoCorrections = true;
            var captured = new StringWriter();
            parse.Invoke(new InvocationConfiguration { Output = captured, Error = captured });
            // "'--thread' was not matched. Did you mean one of the following?" then one candidate a line.
            string[] lines = captured.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            string? token = parse.UnmatchedTokens.FirstOrDefault();
            int asked = Array.FindIndex(lines, l => token is not null && l.StartsWith($"'{token}' was not matched", StringComparison.Ordinal));
            if (asked >= 0)
            {
                string[] candidates = lines.Skip(asked + 1).TakeWhile(l => !l.Contains(' ', StringComparison.Ordinal) && !l.Contains('\'', StringComparison.Ordinal)).ToArray();
                if (candidates.Length > 0)
                {
                    suggestion = $"; did you mean {string.Join(" or ", candidates)}?";
                }
            }
        }

        string hint = entry.Spec is null ? "see 'fastattn --help'" : $"see 'fastattn {entry.Spec.Name} --help'";
        return $"{where}{message}{suggestion} ({hint})";
    }

    /// <summary>The values of a parse without errors, by option name.</summary>
    public ParsedOptions Options(ParseResult parse, TextWriter notices)
    {
        var (spec, options, positional) = _commands[parse.CommandResult.Command];
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var flags = new HashSet<string>(StringComparer.Ordinal);
        foreach ((string name, Option option) in options)
        {
            if (parse.GetResult(option) is not { Implicit: false })
            {
                continue;
            }

            if (option is Option<bool>)
            {
                flags.Add(name);
            }
            else if (parse.GetValue((Option<string>)option) is string value)
            {
                values[name] = value;
            }
        }

        if (positional is not null && parse.GetValue(positional) is string word)
        {
            if (!values.TryAdd(spec.Positional!, word))
            {
                throw new UsageException($"{spec.Name}: --{spec.Positional} is given twice (once as a bare word)");
            }
        }

        return new ParsedOptions(values, flags) { Notices = notices };
    }
}

/// <summary>The parsed options of one command: values by option name, and the flags given.</summary>
internal sealed class ParsedOptions
{
    private readonly Dictionary<string, string> _values;
    private readonly HashSet<string> _flags;

    public ParsedOptions(Dictionary<string, string> values, HashSet<string> flags)
    {
        _values = values;
        _flags = flags;
    }

    public bool Flag(string name) => _flags.Contains(name);

    /// <summary>Where notices go (stderr): a capped thread count, for one.</summary>
    public TextWriter Notices { get; init; } = TextWriter.Null;

    /// <summary>Every option given with a value, by name (the positional word under its option's name).</summary>
    public IReadOnlyDictionary<string, string> Values => _values;

    /// <summary>
    /// <c>--threads</c>: at least 1; above this machine's core count it is capped to it, with a notice (more threads
    /// than cores only take turns). Null when not given.
    /// </summary>
    public int? Threads()
    {
        int? threads = Int("threads", 1, 1 << 16);
        if (threads > Environment.ProcessorCount)
        {
            Notices.WriteLine($"fastattn: --threads {threads} is more than this machine's {Environment.ProcessorCount} cores; using {Environment.ProcessorCount}");
            return Environment.ProcessorCount;
        }

        return threads;
    }

    /// <summary>
    /// <c>--kernel</c>, checked against the kernel registry (a name it does not know is a usage error listing the
    /// kernels). A known kernel this CPU or input cannot take is reported by the library, with its reasons.
    /// </summary>
    public string? Kernel(string command)
    {
        string? name = Get("kernel");
        if (name is not null && !AttentionKernels.Names.Contains(name.Trim(), StringComparer.OrdinalIgnoreCase))
        {
            throw new UsageException($"{command}: --kernel '{name}' is not a kernel (kernels: {string.Join(", ", AttentionKernels.Names)})");
        }

        string? environment = Environment.GetEnvironmentVariable(AttentionKernels.EnvironmentVariable);
        if (name is null && !string.IsNullOrWhiteSpace(environment) && !AttentionKernels.Names.Contains(environment.Trim(), StringComparer.OrdinalIgnoreCase))
        {
            throw new UsageException($"{command}: {AttentionKernels.EnvironmentVariable}='{environment}' is not a kernel (kernels: {string.Join(", ", AttentionKernels.Names)})");
        }

        return name;
    }

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
