namespace FastAttention.Tests.Support;

/// <summary>What every CLI test class uses: the tool run in process, and the small OCR block the tests feed it.</summary>
public abstract class CliTest
{
    /// <summary>Runs <c>fastattn</c> with <paramref name="args"/>: exit code, stdout, stderr.</summary>
    protected static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    /// <summary>A file of the 42-token OCR block (8 heads, d = 15) in data/ocr/line40/block2.</summary>
    protected static string Ocr(string file) => Data.Fixture("ocr", "line40", "block2", file);
}
