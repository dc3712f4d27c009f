namespace FastAttention.Tests.Support;

/// <summary>
/// Tests that need a program the .NET SDK does not bring (Python with NumPy, Chromium). On a developer's
/// machine without it such a test is skipped with the install hint; under <c>CI=true</c> it runs and fails,
/// so a CI run can never pass by skipping (.ci/run installs both and also fails on any skipped test).
/// </summary>
internal static class Prerequisite
{
    /// <summary>True when the environment variable <c>CI</c> is <c>true</c>.</summary>
    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>The Skip reason for a fact whose prerequisite may be missing: null (run it) when it is present
    /// or under CI, where <see cref="Require"/> then fails the test.</summary>
    public static string? SkipReason(bool available, string missing) => available || InCi ? null : missing + "; skipped (under CI=true it fails)";

    /// <summary>Fails the test when its prerequisite is missing (reached only under CI, or when the Skip was not set).</summary>
    public static void Require(bool available, string missing) => Assert.True(available, missing + " (CI=true: a missing prerequisite fails the run)");
}
