"""Reading compiled GPU code: Triton's bundled ptxas/cuobjdump and the SASS of one kernel.

:func:`sass_stats` finds the MMA kind and count (HGMMA = wgmma, HMMA = mma.sync) and the
instructions of one tile iteration — the smallest loop that contains the dot product's k-loop, with
the k-loop counted once.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path


def tool(name: str) -> str:
    import triton

    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for candidate in (f"{name}-blackwell", name):  # the newer ptxas reads the PTX versions Triton writes
        if (base / candidate).is_file() and subprocess.run([str(base / candidate), "--version"], capture_output=True,
                                                           check=False).returncode == 0:
            return str(base / candidate)
    raise FileNotFoundError(f"Triton's bundled {name} was not found under {base}")


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_x]*)\s*([^;]*);")


def parse_sass(text: str):
    """``[(address, opcode, modifiers, operands)]`` of the instructions of one kernel's SASS."""
    return [(int(m.group(1), 16), m.group(3), m.group(4), m.group(5)) for m in _SASS_LINE.finditer(text)]


def loops(instructions):
    """Loops as ``(start, end)`` address pairs, from the backward branches."""
    found = []
    for address, opcode, _, operands in instructions:
        if opcode == "BRA":
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                found.append((int(target.group(1), 16), address))
    return found


def sass_stats(instructions):
    mma = [i for i in instructions if i[1] in ("HGMMA", "HMMA")]
    kind = "wgmma" if any(i[1] == "HGMMA" for i in mma) else ("mma.sync" if mma else "none")
    found = loops(instructions)

    def inside(loop):
        return [i for i in instructions if loop[0] <= i[0] <= loop[1]]

    def has_mma(loop):
        return any(i[1] in ("HGMMA", "HMMA") for i in inside(loop))

    # k-loops: loops with MMA containing no other loop with MMA
    mma_loops = [lp for lp in found if has_mma(lp)]
    kloops = [lp for lp in mma_loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in mma_loops)]
    # the tile loop: the smallest loop strictly containing a k-loop; a kernel of one tile per program
    # (no such loop) counts as a whole
    outer = [lp for lp in found if any(lp != k and lp[0] <= k[0] and k[1] <= lp[1] for k in kloops)]
    if outer:
        tile = min(outer, key=lambda lp: lp[1] - lp[0])
    else:
        tile = (instructions[0][0], instructions[-1][0]) if instructions else (0, 0)
    body = inside(tile)
    inner = [k for k in kloops if tile != k and tile[0] <= k[0] and k[1] <= tile[1]]
    in_kloop = {i[0] for k in inner for i in inside(k)}
    kloop_instructions = len(inside(inner[0])) if inner else 0
    mufu = sum(1 for i in body if i[1] == "MUFU" and i[0] not in in_kloop)
    return kind, len(mma), len(body), kloop_instructions, mufu
