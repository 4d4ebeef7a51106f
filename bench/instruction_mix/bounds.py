#!/usr/bin/env python3
"""Cycle bounds per coordinate from the per-trip static tallies in out/*.txt (tally.py spec output).

Datasheet-style assumptions for AMD Zen 4 (NOT measured here; approximate figures of the kind in
Agner Fog's instruction tables / AMD's optimisation guide):
  FMA pipes : 2 x 256-bit (FP0/FP1). A 512-bit FMA/MUL occupies both -> 1 zmm FMA/cycle, 2 ymm FMA/cycle.
              vmulps also issues to these pipes, so FMA-pipe cycles = (fma + fmul) / rate.
  front end : 4..6 instructions/cycle sustained (range reported as [IPC 6 .. IPC 4]).
  loads     : 2 vector loads (incl. vbroadcastss and arithmetic memory operands) per cycle.
  stores    : 1 ymm store/cycle; a zmm store counts 2.
  vdivps    : zmm one per 5 cycles (pessimistic 10); ymm one per 3.5 cycles (pessimistic 7).
"""
import re
import sys

OUT = __import__('os').path.join(__import__('os').path.dirname(__file__), 'out')


def per_trip(name):
    line = open(f'{OUT}/{name}.txt').read().strip().splitlines()[-1]
    assert line.startswith('PER TRIP:')
    return {k: float(v) for k, v in re.findall(r'(\w+)=([\d.]+)', line)}


def add(*ds):
    r = {}
    for d in ds:
        for k, v in d.items():
            r[k] = r.get(k, 0) + v
    return r


# Weight-gradient flush, estimated per trip (see bounds.md): not traced block by block.
FLUSH = {
    # turtle (inlined, traced loop shape): GCC turned outer_tile<16,4,5> into a loop over columns k whose body
    # does 4 rows x 16 slots = 64 products (4 vmulps + 60 FMA, 95 instructions, both ISAs); 1761 products per
    # vector -> ~27.5 iterations per trip, plus prologues and the bias ("ones") rows. Estimate.
    ('turtle', 'avx512'): {'total': 2800, 'fma': 1761, 'vmemld': 1600, 'vmemst': 120},
    ('turtle', 'avx2'): {'total': 2800, 'fma': 1761, 'vmemld': 2050, 'vmemst': 120},
    # meta (out-of-line outer_tile<8,4,5> clones): 80 4x5 tiles per flush of 8 slots -> 70 slot iterations per
    # trip (AVX-512 33-44 instr, AVX2 40-57 instr incl. 6-10 accumulator spills + 6-10 reloads), 10 tile
    # prologue/epilogues per trip, ~60 small 4x1/1x5 tiles per flush. Estimate.
    ('meta', 'avx512'): {'total': 4400, 'fma': 1888, 'vmemld': 1100, 'vmemst': 110},
    ('meta', 'avx2'): {'total': 5500, 'fma': 1888, 'vmemld': 2140, 'vmemst': 910, 'stk_st': 700, 'stk_ld': 700},
}

ROWS = [
    ('turtle fwd  kH=20', 'avx512', 16, ['turtle_fwd20_avx512'], None),
    ('turtle fwd  kH=20', 'avx2', 8, ['turtle_fwd20_avx2'], None),
    ('turtle bwd  kH=20', 'avx512', 16, ['turtle_bwd20_core_avx512'], ('turtle', 'avx512')),
    ('turtle bwd  kH=20', 'avx2', 8, ['turtle_bwd20_core_avx2'], ('turtle', 'avx2')),
    ('meta fwd    H=20', 'avx512', 16, ['meta_fwd20_avx512'], None),
    ('meta fwd    H=20', 'avx2', 8, ['meta_fwd20_avx2'], None),
    ('meta bwd    H=20', 'avx512', 16, ['meta_bwd20_core_avx512', 'meta_bwd20_stage_avx512'], ('meta', 'avx512')),
    ('meta bwd    H=20', 'avx2', 8, ['meta_bwd20_core_avx2', 'meta_bwd20_stage_avx2'], ('meta', 'avx2')),
]


def bound(d, isa, pess=False):
    z = isa == 'avx512'
    fma_rate = 1.0 if z else 2.0
    fma_cyc = (d.get('fma', 0) + d.get('fmul', 0)) / fma_rate
    fe_lo, fe_hi = d['total'] / 6.0, d['total'] / 4.0
    ld = d.get('vmemld', 0) / 2.0
    st = d.get('vmemst', 0) * (2.0 if z else 1.0)
    div = d.get('div', 0) * ((10 if pess else 5) if z else (7 if pess else 3.5))
    return dict(fma=fma_cyc, fe_lo=fe_lo, fe_hi=fe_hi, ld=ld, st=st, div=div)


def main():
    print('| op | ISA | lanes | instr/trip | FMA/trip | FMA+mul pipe cyc/trip | other FP/trip | div/trip | bcast/trip '
          '| stack st+ld/trip | instr/coord | FMA instr/coord | cyc/coord: FMA pipes | front end (IPC 6..4) '
          '| loads | stores | div (5|10 zmm, 3.5|7 ymm) | bound cyc/coord | FMA-peak fraction |')
    print('|' + '---|' * 19)
    for label, isa, lanes, names, fl in ROWS:
        d = add(*[per_trip(n) for n in names], FLUSH.get(fl, {}) if fl else {})
        b = bound(d, isa)
        bp = bound(d, isa, pess=True)
        worst_lo = max(b['fma'], b['fe_lo'], b['ld'], b['st'], b['div'])
        worst_hi = max(b['fma'], b['fe_hi'], b['ld'], b['st'], bp['div'])
        frac_lo, frac_hi = b['fma'] / worst_hi, b['fma'] / worst_lo
        c = lambda x: f'{x / lanes:.0f}'
        print(f"| {label} | {isa} | {lanes} | {d['total']:.0f} | {d.get('fma', 0):.0f} | {b['fma']:.0f} "
              f"| {d.get('fparith', 0) - d.get('fmul', 0):.0f} | {d.get('div', 0):.0f} | {d.get('bcast', 0):.0f} "
              f"| {d.get('stk_st', 0):.0f}+{d.get('stk_ld', 0):.0f} | {d['total'] / lanes:.0f} | {d.get('fma', 0) / lanes:.1f} "
              f"| {c(b['fma'])} | {c(b['fe_lo'])}..{c(b['fe_hi'])} | {c(b['ld'])} | {c(b['st'])} "
              f"| {c(b['div'])}..{c(bp['div'])} | {c(worst_lo)}..{c(worst_hi)} | {frac_lo:.0%}..{frac_hi:.0%} |")


if __name__ == '__main__':
    main()
