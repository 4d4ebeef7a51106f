#!/bin/bash
# The static instruction-mix analysis of bench/README.md ("What bounds each op (CPU)"): disassembles
# the per-ISA kernel objects, tallies each hand-traced per-trip path (specs/*.spec: address ranges
# and how often one trip of the coordinate loop runs each), and prints the cycle bounds (bounds.py).
# The addresses in specs/ fit the objects built from commit 01ca497 (GCC 12, -O3); after a rebuild
# re-derive them with `python3 tally.py loops dis/<obj>.C.s '<function>'` (the loop bodies are
# recognisable by their FMA counts: 400, 176, 22, 20).
#   bash bench/instruction_mix/run_all.sh [OBJECT_DIR]   (default: build/temp/csrc/cpu)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
objs=$(cd "${1:-$here/../../build/temp/csrc/cpu}" && pwd)
cd "$here"
mkdir -p dis out
for f in meta_lstm_avx512 meta_lstm_avx2 turtle_avx512 turtle_avx2; do
  objdump -d -r --no-show-raw-insn -C "$objs/$f.o" > "dis/$f.C.s"
done
for s in specs/*.spec; do
  b=$(basename "$s" .spec)
  python3 tally.py spec "$s" > "out/$b.txt"
  echo "$b: $(tail -1 "out/$b.txt")"
done
python3 bounds.py | tee out/bounds_table.md
