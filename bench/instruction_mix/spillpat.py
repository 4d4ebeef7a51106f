#!/usr/bin/env python3
"""Classify stack traffic in an address range: what is stored (a broadcast result, an FMA result, other)
and what reads the stack (plain reload, FMA memory operand, other).  usage: spillpat.py DIS FUNC START END"""
import re, sys
sys.path.insert(0, __import__('os').path.dirname(__file__))
from tally import read_funcs, find, STACK
dis, sub, s, e = sys.argv[1], sys.argv[2], int(sys.argv[3], 16), int(sys.argv[4], 16)
name, insns = find(read_funcs(dis), sub)
sel = [i for i in insns if s <= i['addr'] <= e]
producer = {}  # reg -> mnemonic that last wrote it
from collections import Counter
st, ld = Counter(), Counter()
for i in sel:
    ops = i['ops'].split('#')[0]
    parts = [p.strip() for p in re.split(r',(?![^(]*\))', ops)]
    mn = i['mn']
    if mn.startswith(('vmovaps', 'vmovups')) and parts and STACK.search(parts[-1]):
        st['store of ' + producer.get(parts[0], 'other').split()[0]] += 1
        continue
    if STACK.search(ops) and '(' in ops:
        if mn.startswith(('vmovaps', 'vmovups')):
            ld['plain reload'] += 1
        elif mn.startswith(('vfmadd', 'vfnmadd', 'vfmsub')):
            ld['FMA memory operand'] += 1
        else:
            ld[mn + ' memory operand'] += 1
    if parts and parts[-1].startswith('%ymm') or parts and parts[-1].startswith('%zmm'):
        producer[parts[-1]] = 'bcast' if mn.startswith('vbroadcast') else ('fma' if mn.startswith(('vfmadd','vfnmadd')) else mn)
print(name[:90], hex(s), hex(e))
print('  stack stores:', dict(st))
print('  stack reads :', dict(ld))
