// libtorch has one global random generator: VitTrainer and MatchTrainer seed it and then initialise their models from
// it, and other tests draw from it (torch.randn). Test classes running in parallel interleaved those draws, so two
// trainers with the same seed started from different weights (seen in CI on 2026-12-02, AMD EPYC, under load).
// The classes of this assembly therefore run one at a time.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
