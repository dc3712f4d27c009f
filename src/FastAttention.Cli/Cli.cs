using System.CommandLine;
using System.CommandLine.Help;
using System.Text;
using FastAttention.IO;
using Spectre.Console;

namespace FastAttention.Cli;

/// <summary>A <c>fastattn</c> command: its name, one-line summary, options and body.</summary>
internal sealed record Command(string Name, string Summary, IReadOnlyList<OptionSpec> Options, Func<ParsedOptions, TextWriter, int> Run)
{
    /// <summary>The option a bare word on the command line sets (e.g. the experiment's name), if any.</summary>
    public string? Positional { get; init; }
}

/// <summary>
/// Dispatches <c>fastattn COMMAND [options]</c>. Errors are one line on stderr, no stack trace:
/// exit 2 for usage mistakes, 3 for bad input files or data, 1 for anything unexpected, 130 after Ctrl-C.
/// </summary>
internal static class Cli
{
    public static IReadOnlyList<Command> Commands { get; } =
    [
        AttendCommand.Command,
        BackwardCommand.Command,
        TensorCommand.Command,
        LeverageCommand.Command,
        InspectCommand.Command,
        DemoCommand.Command,
        BenchCommand.Command,
        ExperimentCommand.Command,
        ReportCommand.Command,
        ConvertCommand.Command,
        TrainCommand.Train,
        TrainCommand.Eval,
    ];

    /// <summary>Runs one command line. <paramref name="terminal"/>, when given, shows progress (not with <c>--json</c>); <paramref name="cancellation"/> is Ctrl-C.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, IAnsiConsole? terminal = null, CancellationToken cancellation = default)
    {
        if (args.Length == 0)
        {
            stdout.Write(Usage());
            return ExitCode.Usage;
        }

        // Parsing (System.CommandLine) comes before anything else: a usage mistake exits 2 before any file is read or written.
        CommandLineSyntax syntax = CommandLineSyntax.Build(Commands);
        ParseResult parse = syntax.Parse(args);
        if (parse.Action is HelpAction || syntax.AsksForVersion(parse))
        {
            parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
            if (parse.CommandResult.Command is RootCommand && parse.Action is HelpAction)
            {
                stdout.Write(UsageFooter());
            }

            return ExitCode.Ok;
        }

        if (parse.Errors.Count > 0)
        {
            stderr.WriteLine("fastattn: " + syntax.DescribeError(parse));
            return ExitCode.Usage;
        }

        Command command = syntax.CommandOf(parse);
        try
        {
            ParsedOptions options = syntax.Options(parse, stderr);
            return Progress.Run(command.Name, options.Flag("json") ? null : terminal, stdout, cancellation, output => command.Run(options, output));
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            stderr.WriteLine("fastattn: cancelled");
            return ExitCode.Cancelled;
        }
        catch (AgreedFailureException ex)
        {
            // Every rank of a distributed run prints the same line, the failing rank's, and leaves with its exit code.
            stderr.WriteLine("fastattn " + ex.Message);
            return ex.ExitCode;
        }
        catch (Exception ex) when (Classify(command.Name, ex) is (int code, string line))
        {
            stderr.WriteLine("fastattn: " + line);
            return code;
        }
    }

    /// <summary>
    /// The exit code and one-line message (without the "fastattn: " prefix) of an expected failure of <paramref name="command"/>,
    /// or null for an unexpected one (a bug: it keeps its stack trace).
    /// </summary>
    public static (int Code, string Line)? Classify(string command, Exception ex) => ex switch
    {
        // One wording: every usage error names the command first.
        UsageException => (ExitCode.Usage, ex.Message.StartsWith(command + ":", StringComparison.Ordinal) ? ex.Message : $"{command}: {ex.Message}"),
        TensorFileException or BadInputException => (ExitCode.BadInput, ex.Message),

        // A forced kernel that cannot take this input (or this CPU) says why.
        NotSupportedException => (ExitCode.Usage, OneLine(ex.Message)),

        // Finite inputs whose scores or sums left float's range: no output is written.
        OverflowException => (ExitCode.BadInput, "bad input: " + OneLine(ex.Message)),

        // The library's validation (non-finite values, shapes) names the input and the problem.
        ArgumentException => (ExitCode.BadInput, "bad input: " + OneLine(ex.Message)),

        // A peer of a distributed run failed or timed out, or MPI is missing: the message names the rank.
        FastAttention.Distributed.DistributedException => (ExitCode.Failure, OneLine(ex.Message)),
        IOException or UnauthorizedAccessException or OutOfMemoryException => (ExitCode.Failure, OneLine(ex.Message)),
        _ => null,
    };

    /// <summary>The CLI's name of a method: exact, poly or sketch.</summary>
    public static string MethodName(AttentionMethod method) => method switch
    {
        AttentionMethod.Polynomial => "poly",
        AttentionMethod.Sketch => "sketch",
        _ => "exact",
    };

    /// <summary>What <c>fastattn</c> alone prints: the commands, tensor syntax and exit codes.</summary>
    public static string Usage()
    {
        var text = new StringBuilder();
        text.AppendLine("fastattn: fast exact and approximate transformer attention on the CPU");
        text.AppendLine();
        text.AppendLine("usage: fastattn COMMAND [options]     (fastattn COMMAND --help for its options)");
        text.AppendLine();
        foreach (Command command in Commands)
        {
            text.AppendLine($"  {command.Name,-10} {command.Summary}");
        }

        text.AppendLine();
        text.Append(UsageFooter());
        return text.ToString();
    }

    private static string UsageFooter() =>
        "Tensors: FILE.npy, or FILE.npz:NAME / FILE.safetensors:NAME for one tensor of a multi-tensor file." + Environment.NewLine +
        "Exit codes: 0 ok, 1 unexpected failure, 2 usage error (including a forced kernel that cannot take the input), 3 bad input file or data, 130 cancelled (Ctrl-C)." + Environment.NewLine;

    private static string OneLine(string message)
    {
        int paren = message.IndexOf(" (Parameter '", StringComparison.Ordinal);
        return (paren > 0 ? message[..paren] : message).ReplaceLineEndings(" ");
    }
}
