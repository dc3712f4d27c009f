"""Refreshes the two generated parts of README.md (the test suite checks both):

1. the three C# examples, copied from tests/FastAttention.Tests/ReadmeExampleTests.cs (between the
   "README example N" markers), so the README shows them exactly as tested;
2. the results table, copied from the summary of the committed report docs/experiments/report.md
   (written by `fastattn report --full --peers --force --out docs/experiments`).

Run from the repository root: python3 tools/update_readme.py
"""
import re

source = open("tests/FastAttention.Tests/ReadmeExampleTests.cs", encoding="utf-8").read()
readme = open("README.md", encoding="utf-8").read()

library = readme.index("## The library")
for m in re.finditer(r"// begin README example (\d)\n(.*?)\n\s*// end README example \1", source, re.S):
    lines = m.group(2).split("\n")
    indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
    code = "\n".join(l[indent:] if len(l) >= indent else l.lstrip() for l in lines)
    block = list(re.finditer(r"```csharp\n.*?\n```", readme[library:], re.S))[int(m.group(1)) - 1]
    readme = readme[:library + block.start()] + "```csharp\n" + code + "\n```" + readme[library + block.end():]


def table_after(text, heading):
    start = text.index("\n" + heading + "\n")
    lines = text[start:].split("\n")
    first = next(i for i, l in enumerate(lines) if l.startswith("|"))
    last = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    return start, lines, first, last


report = open("docs/experiments/report.md", encoding="utf-8").read()
_, rlines, rfirst, rlast = table_after(report, "## Summary")
start, lines, first, last = table_after(readme, "## Results")
lines[first:last] = rlines[rfirst:rlast]
readme = readme[:start] + "\n".join(lines)
open("README.md", "w", encoding="utf-8").write(readme)
