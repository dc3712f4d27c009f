"""Formats one `fastattn bench --json` result (stdin) as a markdown table row; argv[1] is the label."""
import json
import sys

r = json.load(sys.stdin)
label = sys.argv[1]
peak = "{:.0f}% of {:.0f}".format(r["percentOfPeak"], r["peakGflops"])
ms = "{:.2f}".format(r["medianSeconds"] * 1e3)
gflops = "{:.1f}".format(r["gflops"])
if r["method"] == "gemm":
    print("| {} | {} | {} | {} | {} | - | - |".format(label, r["threads"], ms, gflops, peak))
else:
    bw = "-"
    if "readBandwidthGBps" in r:
        bw = "{:.1f} GB/s = {:.0f}% of {:.1f} GB/s".format(r["inputGBps"], r["percentOfBandwidth"], r["readBandwidthGBps"])
    mib = "{:.0f} MiB".format(r["peakWorkingSetBytes"] / 2**20)
    print("| {} | {} | {} | {} | {} | {} | {} |".format(label, r["threads"], ms, gflops, peak, mib, bw))
