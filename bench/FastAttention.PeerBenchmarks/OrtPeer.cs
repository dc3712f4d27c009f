using Microsoft.ML.OnnxRuntime;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// ONNX Runtime's fused <c>com.microsoft</c> <c>MultiHeadAttention</c> (NuGet Microsoft.ML.OnnxRuntime, CPU provider)
/// on the same arrays our methods get. Ours are <c>[h, n, d]</c>; ONNX Runtime takes <c>[1, n, h*d]</c>, so the inputs
/// are laid out that way once, before any timing, and <see cref="Output"/> lays the result back for comparison.
/// The session runs sequentially with <c>threads</c> intra-op threads, all graph optimisations, into a preallocated output.
/// </summary>
internal sealed class OrtPeer : IDisposable
{
    private static readonly string[] InputNames = ["query", "key", "value"];
    private static readonly string[] OutputNames = ["output"];

    private readonly int _n, _heads, _d;
    private readonly float[] _output;
    private readonly InferenceSession _session;
    private readonly SessionOptions _options;
    private readonly RunOptions _run = new();
    private readonly OrtValue[] _inputs, _outputs;

    public OrtPeer(float[] q, float[] k, float[] v, int n, int heads, int d, bool causal, int threads)
    {
        _n = n;
        _heads = heads;
        _d = d;
        _options = new SessionOptions
        {
            IntraOpNumThreads = threads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
        };
        _session = new InferenceSession(OnnxAttentionModel.MultiHeadAttention(n, heads, d, causal), _options);
        long[] shape = [1, n, (long)heads * d];
        _inputs = [.. new[] { q, k, v }.Select(x => OrtValue.CreateTensorValueFromMemory(SequenceMajor(x), shape))];
        _output = new float[n * heads * d];
        _outputs = [OrtValue.CreateTensorValueFromMemory(_output, shape)];
    }

    /// <summary>One forward into the preallocated output.</summary>
    public void Run() => _session.Run(_run, InputNames, _inputs, OutputNames, _outputs);

    /// <summary>The last output in our layout, <c>[h, n, d]</c>.</summary>
    public float[] Output()
    {
        var result = new float[_output.Length];
        for (int head = 0; head < _heads; head++)
        {
            for (int i = 0; i < _n; i++)
            {
                Array.Copy(_output, ((long)i * _heads + head) * _d, result, ((long)head * _n + i) * _d, _d);
            }
        }

        return result;
    }

    public void Dispose()
    {
        foreach (var value in _inputs.Concat(_outputs))
        {
            value.Dispose();
        }

        _run.Dispose();
        _session.Dispose();
        _options.Dispose();
    }

    // [h, n, d] -> [n, h, d]
    private float[] SequenceMajor(float[] x)
    {
        var result = new float[x.Length];
        for (int head = 0; head < _heads; head++)
        {
            for (int i = 0; i < _n; i++)
            {
                Array.Copy(x, ((long)head * _n + i) * _d, result, ((long)i * _heads + head) * _d, _d);
            }
        }

        return result;
    }
}
