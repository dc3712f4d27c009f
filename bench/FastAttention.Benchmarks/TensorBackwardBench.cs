using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace FastAttention.Benchmarks;

/// <summary>
/// One training step of exact order-3 tensor attention, one head: the forward that returns the log-sum-exp, then the
/// backward (GFLOP/s count 4 n^3 d + 10 n^3 d, FlopCount.TensorAttention plus FlopCount.TensorAttentionBackward). The
/// goal shape is n = 1024, d = 64; n = 255, d = 60 is not a multiple of the vector width or of the tiles. `Backward` alone
/// is timed too, on the forward's output. One step at n = 1024 takes tens of seconds, past the in-process toolchain's
/// default time limit, so this class runs <see cref="LongConfig"/>: <see cref="BenchConfig"/>'s columns, one warm-up, three
/// iterations, a 30-minute limit.
/// </summary>
[Config(typeof(LongConfig))]
public class TensorBackwardBench : IFlopCounted
{
    private float[] _q = [], _k1 = [], _k2 = [], _v1 = [], _v2 = [], _o = [], _dO = [], _lse = [];
    private float[] _dq = [], _dk1 = [], _dk2 = [], _dv1 = [], _dv2 = [];

    [Params("255x60", "1024x64")]
    public string Case { get; set; } = "";

    [Params(1, 2)]
    public int Threads { get; set; }

    [Params("forward+backward", "backward")]
    public string Pass { get; set; } = "";

    private static (int N, int D) Size(string shape) => shape == "1024x64" ? (1024, 64) : (255, 60);

    private TensorAttentionShape Shape => new(1, Size(Case).N, Size(Case).N, Size(Case).D, Size(Case).D);

    private TensorAttentionOptions Options => new() { MaxDegreeOfParallelism = Threads };

    [GlobalSetup]
    public void Setup()
    {
        (int n, int d) = Size(Case);
        (_q, _k1, _v1, _o) = BenchInputs.Uniform(n, d);
        (_dO, _k2, _v2, _) = BenchInputs.Uniform(n, d, seed: 43);
        _lse = new float[n];
        (_dq, _dk1, _dk2, _dv1) = (new float[n * d], new float[n * d], new float[n * d], new float[n * d]);
        _dv2 = new float[n * d];
        TensorAttention.Compute(_q, _k1, _k2, _v1, _v2, Shape, _o, _lse, Options);
    }

    [Benchmark]
    public void TrainingStep()
    {
        if (Pass == "forward+backward")
        {
            TensorAttention.Compute(_q, _k1, _k2, _v1, _v2, Shape, _o, _lse, Options);
        }

        TensorAttention.Backward(_q, _k1, _k2, _v1, _v2, _o, _dO, _lse, Shape, _dq, _dk1, _dk2, _dv1, _dv2, Options);
    }

    /// <summary>BenchConfig for steps of tens of seconds.</summary>
    public sealed class LongConfig : ManualConfig
    {
        public LongConfig()
        {
            AddJob(Job.ShortRun.WithWarmupCount(1).WithIterationCount(3).WithToolchain(new InProcessEmitToolchain(TimeSpan.FromMinutes(30), logOutput: true)));
            AddColumn(new GflopsColumn(false), new GflopsColumn(true));
        }
    }

    public double Flops(IReadOnlyDictionary<string, object> p)
    {
        (int n, int d) = Size((string)p["Case"]);
        var shape = new TensorAttentionShape(1, n, n, d, d);
        double backward = FlopCount.TensorAttentionBackward(shape, default);
        return (string)p["Pass"] == "forward+backward" ? FlopCount.TensorAttention(shape, default) + backward : backward;
    }
}
