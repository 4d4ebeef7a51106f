#!/usr/bin/env python3
"""Static instruction-mix tally of objdump output (objdump -d -r --no-show-raw-insn -C).

Usage:
  tally.py loops  DIS.s 'FUNC-SUBSTRING'              # list loops (backward-jump ranges), nested, with mixes
  tally.py range  DIS.s 'FUNC-SUBSTRING' START END [-x S:E ...]   # tally [START, END] minus excluded ranges
  tally.py funcs  DIS.s 'SUBSTRING'                   # list matching functions and sizes

Categories (per instruction):
  fma      vfmadd*/vfmsub*/vfnmadd*/vfnmsub*  (fma_bcst: of which with an embedded {1toN} broadcast memory operand,
           fma_mem: of which with any memory operand)
  fparith  vmulps vaddps vsubps vmaxps vminps vcmpps vblend* vandps/vorps/vxorps/vandnps vrcp* vround* vrndscale*
           vcvt* vfixup* vpternlog* vpand* vpor* vpxor* vpadd* vpsub* vpsll* vpsrl* vpsra* vpcmp* vpblend* (non-FMA
           FP/int vector ALU)
  div      vdivps/vdivss ; sqrt vsqrt*
  bcast    vbroadcastss / vpbroadcastd (register or memory source)
  shuf     vperm* vshuf* vunpck* vinsert* vextract* valign* vpshufd vmovsh* ...
  vload    vector move from memory (vmovups/vmovaps/vmovdqu*/ ... reg <- mem)
  vstore   vector move to memory
  stk_st   vector stores to (%rsp)/(%rbp) based addresses   (subset of vstore)
  stk_ld   vector loads from (%rsp)/(%rbp) based addresses, incl. memory operands of arithmetic (subset of all)
  kmask    k-register ops
  scalar/branch/other: everything else (integer, lea, cmp, jcc, calls ...)
"""
import re
import sys
from collections import Counter, OrderedDict

HDR = re.compile(r'^([0-9a-f]+) <(.*)>:$')
INS = re.compile(r'^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$')
REL = re.compile(r'^\s+([0-9a-f]+):\s+(R_X86_64_\S+)\s+(.*)$')


def read_funcs(path):
    funcs = OrderedDict()
    cur = None
    with open(path) as f:
        for line in f:
            line = line.rstrip('\n')
            m = HDR.match(line)
            if m:
                name = m.group(2)
                key = name
                n = 2
                while key in funcs:
                    key = f'{name} #{n}'
                    n += 1
                cur = funcs.setdefault(key, [])
                continue
            if cur is None:
                continue
            m = REL.match(line)
            if m:
                if cur:
                    cur[-1]['reloc'] = m.group(3)
                continue
            m = INS.match(line)
            if m:
                mn = m.group(2)
                ops = m.group(3)
                if mn in ('rep', 'lock', 'notrack', 'bnd', 'data16', 'cs', 'ds') and ops:
                    parts = ops.split(None, 1)
                    mn = mn + ' ' + parts[0]
                    ops = parts[1] if len(parts) > 1 else ''
                cur.append({'addr': int(m.group(1), 16), 'mn': mn, 'ops': ops})
    return funcs


def find(funcs, sub):
    hits = [k for k in funcs if sub in k]
    if not hits:
        sys.exit(f'no function matching {sub!r}')
    # prefer the largest
    hits.sort(key=lambda k: -len(funcs[k]))
    return hits[0], funcs[hits[0]]


VEC = re.compile(r'%[xyz]mm\d+')
STACK = re.compile(r'\((%rsp|%rbp)[,)]')
MEM = re.compile(r'\(')


def category(ins):
    mn, ops = ins['mn'], ins['ops']
    ops_nc = ops.split('#')[0]
    hasmem = bool(MEM.search(ops_nc)) and not mn.startswith('lea') and not mn.startswith('nop')
    vec = bool(VEC.search(ops_nc))
    cats = []
    base = mn.split()[-1]
    b = base
    if b.startswith(('vfmadd', 'vfmsub', 'vfnmadd', 'vfnmsub')):
        cats.append('fma')
        if '{1to' in ops_nc:
            cats.append('fma_bcst')
        if hasmem:
            cats.append('fma_mem')
    elif b.startswith(('vdiv',)):
        cats.append('div')
    elif b.startswith(('vsqrt', 'vrsqrt')):
        cats.append('sqrt')
    elif b.startswith(('vbroadcastss', 'vpbroadcastd', 'vbroadcastf', 'vbroadcasti')):
        cats.append('bcast')
    elif b.startswith(('vperm', 'vshuf', 'vunpck', 'vinsert', 'vextract', 'valign', 'vpshuf', 'vpunpck',
                       'vmovsldup', 'vmovshdup', 'vmovlhps', 'vmovhlps', 'vpalignr', 'vpermt2', 'vpermi2',
                       'vcompress', 'vexpand')):
        cats.append('shuf')
    elif b.startswith(('vmovups', 'vmovaps', 'vmovdqu', 'vmovdqa', 'vmovss', 'vmovd', 'vmovq', 'vmovsd',
                       'vmovapd', 'vmovupd', 'vmovntps', 'vlddqu')) and vec:
        # AT&T: src, dst
        parts = [p.strip() for p in re.split(r',(?![^(]*\))', ops_nc)]
        dst = parts[-1] if parts else ''
        if '(' in dst:
            cats.append('vstore')
            cats.append('vmemst')
            if STACK.search(dst):
                cats.append('stk_st')
        elif hasmem:
            cats.append('vload')
            cats.append('vmemld')
            if STACK.search(ops_nc):
                cats.append('stk_ld')
        else:
            cats.append('vmovreg')
        return cats
    elif b.startswith('k'):
        cats.append('kmask')
    elif b.startswith('v') and vec:
        cats.append('fparith')
        if b.startswith(('vmulps', 'vmulss')):
            cats.append('fmul')  # runs on the FMA pipes (Zen 4 FP0/FP1)
    elif b.startswith('j') or b.startswith('call') or b.startswith('ret'):
        cats.append('branch')
    else:
        cats.append('scalar')
    if hasmem and vec and STACK.search(ops_nc) and 'stk_ld' not in cats and 'stk_st' not in cats:
        cats.append('stk_ld')  # memory operand of an arithmetic op read from the stack
    if hasmem and vec:
        cats.append('vmemld')  # any vector-register instruction reading memory (load, bcast, FMA/arith mem operand)
    elif hasmem:
        cats.append('smem')
    return cats


def tally(insns):
    c = Counter()
    calls = Counter()
    for ins in insns:
        c['total'] += 1
        for k in category(ins):
            c[k] += 1
        if ins['mn'].startswith('call'):
            calls[ins.get('reloc', ins['ops'])[:160]] += 1
    return c, calls


COLS = ['total', 'fma', 'fma_bcst', 'fma_mem', 'fparith', 'fmul', 'div', 'sqrt', 'bcast', 'shuf', 'vload', 'vstore',
        'stk_ld', 'stk_st', 'vmemld', 'vmemst', 'smem', 'vmovreg', 'kmask', 'scalar', 'branch']


def fmt(c):
    return ' '.join(f'{k}={c[k]}' for k in COLS if c[k])


def jump_target(ins):
    if not ins['mn'].startswith('j'):
        return None
    m = re.match(r'([0-9a-f]+)\s+<', ins['ops'])
    if not m:
        return None
    return int(m.group(1), 16)


def loops(insns):
    rng = set()
    for ins in insns:
        t = jump_target(ins)
        if t is not None and t <= ins['addr']:
            rng.add((t, ins['addr']))
    # merge loops with same head: keep the widest latch
    heads = {}
    for s, e in rng:
        heads[s] = max(heads.get(s, e), e)
    return sorted(heads.items(), key=lambda r: (r[0], -r[1]))


def in_ranges(a, rs):
    return any(s <= a <= e for s, e in rs)


def cmd_loops(path, sub):
    funcs = read_funcs(path)
    name, insns = find(funcs, sub)
    print(f'# {name[:200]}\n# {len(insns)} instructions, {insns[0]["addr"]:#x}-{insns[-1]["addr"]:#x}')
    c, calls = tally(insns)
    print('# whole function:', fmt(c))
    L = loops(insns)
    for s, e in L:
        depth = sum(1 for s2, e2 in L if s2 <= s and e <= e2 and (s2, e2) != (s, e))
        inner = [(s2, e2) for s2, e2 in L if s <= s2 and e2 <= e and (s2, e2) != (s, e)]
        own = [i for i in insns if s <= i['addr'] <= e and not in_ranges(i['addr'], inner)]
        allin = [i for i in insns if s <= i['addr'] <= e]
        c, calls = tally(own)
        ca, _ = tally(allin)
        print(f'{"  " * depth}loop {s:#x}-{e:#x} depth={depth} inner={len(inner)} own: {fmt(c)}')
        print(f'{"  " * depth}    all-incl-inner: total={ca["total"]} fma={ca["fma"]}')
        for k, v in calls.items():
            print(f'{"  " * depth}    call x{v}: {k}')


def cmd_range(path, sub, start, end, excl):
    funcs = read_funcs(path)
    name, insns = find(funcs, sub)
    sel = [i for i in insns if start <= i['addr'] <= end and not in_ranges(i['addr'], excl)]
    c, calls = tally(sel)
    print(f'# {name[:160]}\n# range {start:#x}-{end:#x} excl {[(hex(a), hex(b)) for a, b in excl]}')
    print(fmt(c))
    for k, v in calls.items():
        print(f'    call x{v}: {k}')
    return c


def cmd_funcs(path, sub):
    funcs = read_funcs(path)
    for k, v in funcs.items():
        if sub in k:
            c, _ = tally(v)
            print(f'{len(v):6d} fma={c["fma"]:5d} {k[:220]}')


def cmd_blocks(path, sub, start=None, end=None):
    funcs = read_funcs(path)
    name, insns = find(funcs, sub)
    targets = set()
    for ins in insns:
        t = jump_target(ins)
        if t is not None:
            targets.add(t)
    blocks = []
    cur = []
    for ins in insns:
        if ins['addr'] in targets and cur:
            blocks.append(cur)
            cur = []
        cur.append(ins)
        if ins['mn'].startswith('j') or ins['mn'].startswith('ret'):
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    for b in blocks:
        a0 = b[0]['addr']
        if start is not None and not (start <= a0 <= end):
            continue
        c, calls = tally(b)
        last = b[-1]
        term = f"{last['mn']} {last['ops'][:40]}" if last['mn'].startswith(('j', 'ret')) else 'fallthrough'
        print(f'{a0:#7x}-{last["addr"]:#7x} n={c["total"]:4d} fma={c["fma"]:3d} stk={c["stk_ld"]}/{c["stk_st"]} k={c["kmask"]} bc={c["bcast"]} ld={c["vload"]} st={c["vstore"]} | {term}'
              + (' CALL ' + ';'.join(k[:60] for k in calls) if calls else ''))


def weighted_range(insns, rng):
    """START:END[*MULT] (hex, inclusive; MULT: how often one trip runs it) over a function's
    instructions: (start, end, mult, its mix, its calls)."""
    mult = 1.0
    if '*' in rng:
        rng, m = rng.split('*')
        mult = float(m)
    s, e = (int(x, 16) for x in rng.split(':'))
    c, calls = tally([i for i in insns if s <= i['addr'] <= e])
    return s, e, mult, c, calls


def add_weighted(total, counts, mult):
    for k, v in counts.items():
        total[k] += v * mult


def cmd_path(path, sub, specs):
    """specs: START:END[*MULT] ...  (inclusive address ranges, each executed MULT times per trip)."""
    funcs = read_funcs(path)
    name, insns = find(funcs, sub)
    tot = Counter()
    allcalls = Counter()
    for sp in specs:
        s, e, mult, c, calls = weighted_range(insns, sp)
        add_weighted(tot, c, mult)
        add_weighted(allcalls, calls, mult)
        print(f'  {s:#x}-{e:#x} x{mult:g}: {fmt(c)}')
    print('PER TRIP:', ' '.join(f'{k}={tot[k]:g}' for k in COLS if tot[k]))
    for k, v in allcalls.items():
        print(f'    call x{v:g}: {k}')


def cmd_spec(specfile):
    """Spec file lines: DIS.s | FUNC-SUBSTRING | START:END*MULT  (# comments). Sums the weighted mixes."""
    cache = {}
    tot = Counter()
    for line in open(specfile):
        line = line.split('#')[0].strip()
        if not line:
            continue
        dis, sub, rng = (x.strip() for x in line.split('|'))
        if dis not in cache:
            cache[dis] = read_funcs(dis)
        name, insns = find(cache[dis], sub)
        s, e, mult, c, _ = weighted_range(insns, rng)
        add_weighted(tot, c, mult)
        print(f'  {sub[:40]:40s} {s:#7x}-{e:#7x} x{mult:<6g} {fmt(c)}')
    print('PER TRIP:', ' '.join(f'{k}={tot[k]:g}' for k in COLS if tot[k]))
    return tot


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == 'loops':
        cmd_loops(args[0], args[1])
    elif cmd == 'funcs':
        cmd_funcs(args[0], args[1])
    elif cmd == 'range':
        ex = [tuple(int(x, 16) for x in args[i + 1].split(':')) for i, a in enumerate(args[4:], 4) if a == '-x']
        cmd_range(args[0], args[1], int(args[2], 16), int(args[3], 16), ex)
    elif cmd == 'blocks':
        if len(args) > 2:
            cmd_blocks(args[0], args[1], int(args[2], 16), int(args[3], 16))
        else:
            cmd_blocks(args[0], args[1])
    elif cmd == 'path':
        cmd_path(args[0], args[1], args[2:])
    elif cmd == 'spec':
        cmd_spec(args[0])
    else:
        raise SystemExit(f'tally.py: unknown command {cmd!r} (loops, funcs, range, blocks, path, spec)')


if __name__ == '__main__':
    main(sys.argv)
