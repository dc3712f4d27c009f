namespace FastAttention.Cli;

/// <summary>The <c>fastattn</c> entry point.</summary>
internal static class Program
{
    private static int Main(string[] args) => Cli.Run(args, Console.Out, Console.Error);
}
