"""Checks that the main job printed a real answer: an assistant line of at least three words."""

import re
import sys

out = open(sys.argv[1], encoding="utf-8").read()
answers = [m.group(1).strip() for m in re.finditer(r"^assistant: (.*)$", out, re.M)]
if not answers or len(answers[0].split()) < 3:
    sys.exit(f"ci: the main job printed no real answer; its output was:\n{out}")
print(f"ci: the main job answered: {answers[0]!r}")
