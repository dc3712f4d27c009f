namespace FastAttention.Kernels;

/// <summary>
/// Runs independent work items on up to <c>maxDegree</c> threads, handing items out one at a time
/// from a shared counter so the threads finish together even when items differ in cost (causal
/// tiles, edge blocks). Each thread creates its per-thread state once. Items must not depend on
/// which thread runs them; then the results do not depend on the thread count. One worker runs the
/// items in order on the calling thread (no task, no closure over a counter): the engines call this
/// once per head or per small call, where a parallel region's launch would cost more than the work.
/// </summary>
internal static class ParallelWork
{
    public static void Run<TState>(int items, int maxDegree, Func<TState> createState, Action<int, TState> body)
        where TState : IDisposable
    {
        int workers = Math.Min(items, maxDegree > 0 ? maxDegree : Environment.ProcessorCount);
        if (workers <= 0)
        {
            return;
        }

        if (workers == 1)
        {
            using TState only = createState();
            for (int item = 0; item < items; item++)
            {
                body(item, only);
            }

            return;
        }

        int[] next = [-1];
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            using TState state = createState();
            int item;
            while ((item = Interlocked.Increment(ref next[0])) < items)
            {
                body(item, state);
            }
        });
    }
}
