"""Prints the README's two commands (main job, tests), one per line, so CI runs exactly what users read.

They are the single-line ```bash blocks under the heading "## Two commands"; anything else there
is an error, so the README and CI cannot drift apart unseen.
"""

import re
import sys

text = open(sys.argv[1] if len(sys.argv) > 1 else "README.md", encoding="utf-8").read()
section = re.search(r"^## Two commands.*?$(.*?)(?=^## )", text, re.S | re.M)
if section is None:
    sys.exit("README.md: no '## Two commands' section")
blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
commands = [b.strip() for b in blocks]
if len(commands) != 2 or any("\n" in c or not c for c in commands):
    sys.exit(f"README.md: '## Two commands' must hold exactly two one-line bash blocks, found {commands!r}")
print("\n".join(commands))
