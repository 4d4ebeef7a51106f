"""The source rewrites that let csrc/cuda build against the emulated runtime (build.py applies them
to copies in a build directory; csrc/ itself is never touched).

Kernel files (``*.cu`` and the headers next to them):

- ``kernel<<<grid, block[, shared[, stream]]>>>(args);`` becomes
  ``::lo_emu::launch_kernel(__FILE__, __LINE__, kernel, grid, block, shared, stream, args);``;
- ``extern __shared__ [__align__(N)] T name[];`` becomes ``T* const name = ::lo_emu::dynamic_shared<T>(N);``;
- ``__launch_bounds__(max[, min])`` is removed and ``LO_EMU_LAUNCH_BOUNDS(max[, min]);`` opens the
  kernel's body, so that a launch above the bound fails as on a GPU;
- the file starts with lo_emu/kernel_prologue.h and a ``#line`` back to the original, so compiler
  messages and ``__FILE__`` name csrc/.

The CUDA torch glue (``*_cuda.cpp``, schema.cpp, cuda/glue.h) is registered as a second op namespace,
``learnedopt_emulated``, for CPU tensors: ``TORCH_LIBRARY[_IMPL](learnedopt, CUDA, m)`` becomes
``TORCH_LIBRARY[_IMPL](learnedopt_emulated, CPU, m)`` and the glue's device check accepts the CPU.

Every rule states how often it must match; anything it does not understand (a static ``__shared__``
array, a launch whose configuration does not parse, a rule matching too often or not at all) raises
:class:`RewriteError` naming the file, so that a change in csrc/ fails the emulated build loudly
instead of building something else. Comments and string literals are never rewritten.
"""

from __future__ import annotations

import re

EMULATED_NAMESPACE = "learnedopt_emulated"


class RewriteError(RuntimeError):
    pass


def code_only(text: str) -> str:
    """``text`` with comments and the insides of string and character literals blanked (newlines
    kept): every offset is the same as in ``text``, so a match found here can be spliced there."""
    out = list(text)
    n = len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    i = 0
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif text[i] == '"' and i > 0 and text[i - 1] == "R" and not (i > 1 and (text[i - 2].isalnum() or text[i - 2] == "_")):
            open_paren = text.find("(", i)
            delimiter = text[i + 1:open_paren]
            j = text.find(")" + delimiter + '"', open_paren)
            j = n if j < 0 else j + len(delimiter) + 1
            blank(i + 1, j)
            i = j + 1
        elif text[i] in "\"'" and not (text[i] == "'" and i > 0 and text[i - 1].isdigit()):  # not 1'000
            quote, j = text[i], i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, min(j, n))
            i = j + 1
        else:
            i += 1
    return "".join(out)


_OPEN, _CLOSE = "([{<", ")]}>"


def _matching_close(code: str, start: int, path: str) -> int:
    """Index of the bracket closing the one at ``start`` (round, square, curly or angle)."""
    depth = 0
    for k in range(start, len(code)):
        ch = code[k]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                return k
    raise RewriteError(f"{path}: unbalanced brackets from offset {start}")


def _split_top_level(code: str, path: str, what: str) -> list[tuple[int, int]]:
    """Spans of the comma-separated parts of ``code`` at bracket depth 0."""
    parts, depth, begin = [], 0, 0
    for k, ch in enumerate(code):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise RewriteError(f"{path}: unbalanced brackets in {what}")
        elif ch == "," and depth == 0:
            parts.append((begin, k))
            begin = k + 1
    if depth != 0:
        raise RewriteError(f"{path}: unbalanced brackets in {what}")
    parts.append((begin, len(code)))
    return parts


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _kernel_expression_start(code: str, end: int, path: str) -> int:
    """Start of the kernel expression that ends at ``end`` (exclusive): a possibly qualified name
    with an optional template argument list, e.g. ``weight_grads_kernel<D, S>``."""
    k = end
    while k > 0 and code[k - 1].isspace():
        k -= 1
    if k > 0 and code[k - 1] == ">":
        depth = 0
        while k > 0:
            k -= 1
            if code[k] == ">":
                depth += 1
            elif code[k] == "<":
                depth -= 1
                if depth == 0:
                    break
        else:
            raise RewriteError(f"{path}:{_line_of(code, end)}: unbalanced template arguments before <<<")
        while k > 0 and code[k - 1].isspace():
            k -= 1
    name_end = k
    while k > 0 and (code[k - 1].isalnum() or code[k - 1] in "_:"):
        k -= 1
    if k == name_end:
        raise RewriteError(f"{path}:{_line_of(code, end)}: no kernel name before <<<")
    return k


def _launch_edits(text: str, code: str, path: str):
    for m in re.finditer(r"<<<", code):
        start = _kernel_expression_start(code, m.start(), path)
        close = code.find(">>>", m.end())
        if close < 0:
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: <<< without >>>")
        config = [text[m.end() + a:m.end() + b].strip()
                  for a, b in _split_top_level(code[m.end():close], path, "a launch configuration")]
        if not 2 <= len(config) <= 4 or not all(config):
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: a launch configuration needs 2 to 4 "
                               f"parts (grid, block[, shared bytes[, stream]]), got {config}")
        config += ["0", "nullptr"][len(config) - 2:]
        paren = close + 3
        while paren < len(code) and code[paren].isspace():
            paren += 1
        if paren >= len(code) or code[paren] != "(":
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: expected the kernel's arguments after >>>")
        args_end = _matching_close(code, paren, path)
        args = text[paren + 1:args_end]
        kernel = text[start:m.start()].strip()
        call = (f"::lo_emu::launch_kernel(__FILE__, __LINE__, {kernel}, {', '.join(config)}"
                + (f", {args}" if args.strip() else "") + ")")
        # The lines the launch spanned stay lines, so that later line numbers still match csrc/.
        newlines = text.count("\n", start, args_end + 1) - call.count("\n")
        yield start, args_end + 1, call + "\n" * max(newlines, 0)


_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;]*?)\s*\b(\w+)\s*\[\s*\]\s*;")
_ALIGN = re.compile(r"__align__\s*\(\s*(\d+)\s*\)")


def _shared_edits(text: str, code: str, path: str):
    for m in _EXTERN_SHARED.finditer(code):
        declared = m.group(1)
        aligns = _ALIGN.findall(declared)
        type_name = " ".join(_ALIGN.sub(" ", declared).split())
        if not type_name:
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: no type in an extern __shared__ array")
        alignment = max([int(a) for a in aligns], default=16)
        yield m.start(), m.end(), (f"{type_name}* const {m.group(2)} = "
                                   f"::lo_emu::dynamic_shared<{type_name}>({alignment});")
    rest = _EXTERN_SHARED.sub(lambda m: " " * len(m.group(0)), code)
    static = re.search(r"\b__shared__\b", rest)
    if static:
        raise RewriteError(f"{path}:{_line_of(code, static.start())}: a static __shared__ variable; the "
                           "emulation supports only `extern __shared__ T name[];` (dynamic shared memory)")


def _launch_bounds_edits(text: str, code: str, path: str):
    for m in re.finditer(r"\b__launch_bounds__\s*\(", code):
        close = _matching_close(code, m.end() - 1, path)
        bounds = text[m.end():close].strip()
        k = close + 1
        depth = 0
        while k < len(code):
            if code[k] in "([":
                depth += 1
            elif code[k] in ")]":
                depth -= 1
            elif depth == 0 and code[k] in "{;":
                break
            k += 1
        if k >= len(code) or code[k] != "{":
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: __launch_bounds__ on a kernel without a "
                               "body here; declare the bounds where the kernel is defined")
        yield m.start(), close + 1, ""
        yield k + 1, k + 1, f" LO_EMU_LAUNCH_BOUNDS({bounds});"


def _apply(text: str, edits, path: str) -> str:
    edits = sorted(edits, key=lambda e: (e[0], e[1]))
    for (a0, a1, _), (b0, _b1, _) in zip(edits, edits[1:]):
        if b0 < a1:
            raise RewriteError(f"{path}: overlapping rewrites at line {_line_of(text, b0)}")
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end:]
    return text


def rewrite_kernel_source(text: str, path: str, prologue: bool = True) -> str:
    """A CUDA source (``.cu`` or a header beside one) in the emulated runtime's terms. ``path`` is
    what compiler messages and ``__FILE__`` will show."""
    code = code_only(text)
    edits = [*_launch_edits(text, code, path), *_shared_edits(text, code, path),
             *_launch_bounds_edits(text, code, path)]
    out = _apply(text, edits, path)
    left = code_only(out)
    for token in ("<<<", "__launch_bounds__"):
        if token in left:
            raise RewriteError(f"{path}:{_line_of(left, left.index(token))}: {token} left after the rewrite")
    head = '#include "lo_emu/kernel_prologue.h"\n' if prologue else ""
    return f'{head}#line 1 "{path}"\n{out}'


def _replace_exactly(text: str, pattern: str, replacement: str, path: str, count: int | None) -> str:
    code = code_only(text)
    spans = [m.span() for m in re.finditer(pattern, code)]
    if (count is None and not spans) or (count is not None and len(spans) != count):
        want = "at least once" if count is None else f"{count} time(s)"
        raise RewriteError(f"{path}: expected {pattern!r} {want}, found it {len(spans)} time(s); "
                           "update tests/cuda_emulation/rewrite.py to the new source")
    for start, end in reversed(spans):
        text = text[:start] + re.sub(pattern, replacement, text[start:end]) + text[end:]
    return text


def rewrite_glue_source(text: str, path: str) -> str:
    """A CUDA glue file (``*_cuda.cpp``): its kernels registered for CPU tensors in the emulated
    namespace."""
    out = _replace_exactly(text, r"TORCH_LIBRARY_IMPL\(\s*learnedopt\s*,\s*CUDA\s*,",
                           f"TORCH_LIBRARY_IMPL({EMULATED_NAMESPACE}, CPU,", path, None)
    return f'#line 1 "{path}"\n{out}'


def rewrite_schema(text: str, path: str) -> str:
    """schema.cpp: the same op schemas, declared in the emulated namespace."""
    out = _replace_exactly(text, r"TORCH_LIBRARY\(\s*learnedopt\s*,", f"TORCH_LIBRARY({EMULATED_NAMESPACE},",
                           path, 1)
    return f'#line 1 "{path}"\n{out}'


def rewrite_cuda_glue_header(text: str, path: str) -> str:
    """cuda/glue.h: its device check accepts the emulated device's (CPU) tensors."""
    out = _replace_exactly(text, r"\.is_cuda\(\)", ".is_cpu()", path, 1)
    return f'#line 1 "{path}"\n{out}'


def patch_fiber_stack(text: str, path: str) -> str:
    """HIP-CPU's tile.hpp: its fibers get LO_EMU_FIBER_STACK_BYTES (lo_emu/device.h) of stack instead
    of 256 bytes (raised to libco's 7 KiB minimum), which the TURTLE backward's per-thread arrays
    overflowed."""
    return _replace_exactly(text, r"Fiber::make\(\s*256\s*,", "Fiber::make(LO_EMU_FIBER_STACK_BYTES,", path, 1)
